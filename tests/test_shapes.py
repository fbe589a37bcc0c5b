"""The synthetic shapes domain: deterministic, within spec, boxes tight on visible pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.boxes import box_cxcywh_to_xyxy
from datasets.shapes import ShapesDataset, ShapesSpec, generate_sample, write_coco


def test_same_seed_same_sample():
    a, b = generate_sample(7), generate_sample(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.class_ids, b.class_ids)
    other = generate_sample(8)
    assert a.image.shape != other.image.shape or not np.array_equal(a.image, other.image)


@pytest.mark.parametrize("seed", range(40))
def test_sample_within_spec(seed):
    spec = ShapesSpec()
    sample = generate_sample(seed, spec)
    height, width = sample.image.shape[:2]
    assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
    assert 128 <= min(height, width) and max(height, width) <= 512
    assert 3 / 4 - 0.01 <= width / height <= 4 / 3 + 0.01
    assert 1 <= len(sample.boxes) <= 6
    assert set(sample.class_names) <= {"circle", "square", "triangle"}
    x1, y1, x2, y2 = sample.boxes.T
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= width).all() and (y2 <= height).all()
    assert ((x2 > x1) & (y2 > y1)).all()
    # a visible extent of at most 45% of the shorter side (rotated squares reach sqrt(2) x that)
    assert (np.maximum(x2 - x1, y2 - y1) <= 0.45 * min(height, width) * 1.42 + 2).all()


@pytest.mark.parametrize("seed", range(12))
def test_boxes_are_tight_on_visible_pixels(seed):
    """Shapes are flat colours on a noisy background, so the most frequent colour inside a box is its
    shape's fill. Tight means: the fill touches all four edges of the box (shrinking the box by one
    pixel on any side would cut visible pixels off)."""
    sample = generate_sample(seed)
    image = sample.image.astype(int)
    for box in sample.boxes.astype(int):
        x1, y1, x2, y2 = box
        crop = image[y1:y2, x1:x2]
        colours, counts = np.unique(crop.reshape(-1, 3), axis=0, return_counts=True)
        fill = colours[counts.argmax()]  # the shape's flat fill dominates its own box
        is_fill = (crop == fill).all(-1)
        assert is_fill[0].any() and is_fill[-1].any() and is_fill[:, 0].any() and is_fill[:, -1].any()


def test_star_is_off_by_default_and_on_when_asked():
    names = {name for seed in range(60) for name in generate_sample(seed).class_names}
    assert "star" not in names
    spec = ShapesSpec(with_star=True)
    assert spec.labels == ["circle", "square", "triangle", "star"]
    assert "star" in {name for seed in range(60) for name in generate_sample(seed, spec).class_names}


def test_dataset_yields_transformers_targets():
    dataset = ShapesDataset(5, first_seed=100)
    assert len(dataset) == 5 and dataset.labels == ["circle", "square", "triangle"]
    image, target = dataset[2]
    sample = generate_sample(102)
    assert np.array_equal(image, sample.image)
    assert target["class_labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float32
    assert ((target["boxes"] > 0) & (target["boxes"] <= 1)).all()
    height, width = image.shape[:2]
    back = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([width, height, width, height])
    assert torch.allclose(back, torch.from_numpy(sample.boxes), atol=1e-3)
    with pytest.raises(IndexError):
        dataset[5]


def test_write_coco(tmp_path):
    path = write_coco(tmp_path / "coco", 4, first_seed=3)
    document = json.loads(path.read_text())
    assert [c["id"] for c in document["categories"]] == [1, 2, 3]  # COCO ids start at 1
    assert [c["name"] for c in document["categories"]] == ["circle", "square", "triangle"]
    assert len(document["images"]) == 4
    for image in document["images"]:
        assert (tmp_path / "coco" / image["file_name"]).is_file()
    sample = generate_sample(3)
    first = [a for a in document["annotations"] if a["image_id"] == 1]
    assert len(first) == len(sample.boxes)
    for annotation, box, class_id in zip(first, sample.boxes, sample.class_ids):
        x, y, w, h = annotation["bbox"]
        assert np.allclose([x, y, x + w, y + h], box) and annotation["category_id"] == class_id + 1
    assert not list((tmp_path / "coco").glob(".*tmp"))

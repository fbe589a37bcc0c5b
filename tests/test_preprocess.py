"""Preprocessing parity with transformers' DETR image processor, and detection parity end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil

from conftest import save_tiny_model
from core.boxes import clip_boxes_xyxy
from core.inference import predict
from core.loading import PreprocessConfig, load_detector
from core.preprocess import preprocess, resized_size


def photos() -> list[np.ndarray]:
    # Real photos of several sizes and aspect ratios (portrait from a crop).
    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()[:, :300]]


@pytest.mark.parametrize("short, long", [(800, 1333), (512, 853), (320, 533)])
def test_resize_rule_matches_transformers(short, long):
    rng = np.random.default_rng(0)
    sizes = [(h, w) for h, w in rng.integers(16, 4000, size=(500, 2))] + [(800, 1333), (1333, 800), (600, 600)]
    for h, w in sizes:
        assert resized_size(int(h), int(w), short, long) == get_size_with_aspect_ratio((int(h), int(w)), short, long)


@pytest.mark.parametrize("short", [800, 512])
def test_pixels_match_detr_image_processor(short):
    images = photos()
    processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": round(short * 1333 / 800)})
    reference = processor(images=images, return_tensors="pt")
    ours = preprocess(images, PreprocessConfig(), shortest_edge=short)
    assert ours.pixel_values.shape == reference["pixel_values"].shape
    assert torch.equal(ours.pixel_mask, reference["pixel_mask"])
    difference = (ours.pixel_values - reference["pixel_values"]).abs()
    # PIL rounds its resized pixels to uint8 and so do we on CPU; they differ by at most one
    # 8-bit level on a few pixels: 1 / (255 * 0.224) = 0.0175 in normalized units.
    assert difference.max() < 0.018
    assert difference.mean() < 1e-3


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="no images"):
        preprocess([], PreprocessConfig())
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess([np.zeros((10, 10), dtype=np.uint8)], PreprocessConfig())
    with pytest.raises(ValueError, match="processing size"):
        preprocess([np.zeros((10, 10, 3), dtype=np.uint8)], PreprocessConfig(), shortest_edge=8)


@pytest.mark.parametrize("short", [800, 512])
@pytest.mark.parametrize("gain", ["calm", "high"])
def test_detections_match_transformers_pipeline(tmp_path, short, gain):
    """Same model: our predict == DetrImageProcessor + model + post_process_object_detection:
    same label per query, boxes within 1 pixel, scores within 1e-2.

    Tolerances are for the calm model. The high-gain model (random weights scaled up so queries
    differ) turns one-level pixel rounding differences into box shifts of a few pixels, so for it
    only labels and thresholded detections are compared."""
    detector = load_detector(save_tiny_model(tmp_path / "m", init_std=0.1 if gain == "calm" else 0.3), device="cpu")
    images = photos()
    processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": round(short * 1333 / 800)})
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = detector.model(**inputs)
    sizes = [image.shape[:2] for image in images]
    reference = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes)
    ours = predict(detector, images, shortest_edge=short, batch_size=len(images))
    for theirs, mine, (height, width) in zip(reference, ours, sizes):
        assert len(theirs["scores"]) == mine.num_queries  # threshold 0 keeps every query, in order
        assert np.array_equal(theirs["labels"].numpy(), mine.label_ids)
        assert np.abs(theirs["scores"].numpy() - mine.scores).max() < 1e-2
        their_boxes = clip_boxes_xyxy(theirs["boxes"], width, height).numpy()
        if gain == "calm":
            assert np.abs(their_boxes - mine.boxes).max() < 1.0
        threshold = float(np.median(mine.scores))
        detected = set(mine.to_detections(threshold).data["query_index"])
        expected = set(np.flatnonzero(theirs["scores"].numpy() >= threshold))
        borderline = set(np.flatnonzero(np.abs(mine.scores - threshold) < 1e-2))
        assert detected - borderline == expected - borderline
        assert expected  # the comparison is not vacuous

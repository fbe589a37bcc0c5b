"""Copy-paste augmentation (`core.copy_paste`): pasted boxes are tight and inside the image, never
over an existing box, the sources stay untouched, and the same draws give the same pastes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.boxes import box_cxcywhn_to_xyxy, box_xyxy_to_cxcywhn
from core.copy_paste import copy_paste


def batch(seed: int, size: int = 4):
    """Images of random sizes, each with a few solid-coloured boxes on noise (so a box's pixels are known)."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(size):
        height, width = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(0, 4))):
            w, h = int(rng.integers(4, 30)), int(rng.integers(4, 30))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            if any(min(x + w, b[2]) > max(x, b[0]) and min(y + h, b[3]) > max(y, b[1]) for b in boxes):
                continue  # objects of one image do not overlap here, so each box's pixels are its own
            image[y:y + h, x:x + w] = rng.integers(0, 255, 3)
            boxes.append([x, y, x + w, y + h])
            labels.append(int(rng.integers(0, 4)))
        xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        images.append(image)
        targets.append({"class_labels": torch.tensor(labels, dtype=torch.long),
                        "boxes": box_xyxy_to_cxcywhn(xyxy, width, height)})
    return images, targets


def pixel_boxes(image, target) -> np.ndarray:
    height, width = image.shape[:2]
    return np.round(box_cxcywhn_to_xyxy(target["boxes"].double(), width, height).numpy()).astype(int).reshape(-1, 4)


@pytest.mark.parametrize("seed", range(8))
def test_pasted_boxes_are_tight_inside_and_never_over_an_existing_box(seed):
    images, targets = batch(seed)
    originals = [image.copy() for image in images]
    new_images, new_targets = copy_paste(images, targets, np.random.default_rng(seed), probability=1.0, max_objects=3)
    assert all(np.array_equal(a, b) for a, b in zip(images, originals))  # the sources are untouched
    pasted = 0
    for image, before, after, original in zip(new_images, targets, new_targets, originals):
        old, now = pixel_boxes(original, before), pixel_boxes(image, after)
        assert np.array_equal(now[:len(old)], old) and torch.equal(after["class_labels"][:len(old)],
                                                                    before["class_labels"])
        height, width = image.shape[:2]
        for x0, y0, x1, y1 in now[len(old):]:
            pasted += 1
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 >= 2 and y1 - y0 >= 2
            for ox0, oy0, ox1, oy1 in now[:len(old)]:  # no existing object hidden, even in part
                assert min(x1, ox1) <= max(x0, ox0) or min(y1, oy1) <= max(y0, oy0)
            # tight: the pasted rectangle holds one source object's pixels, solid as it was drawn
            patch = image[y0:y1, x0:x1].reshape(-1, 3)
            assert (patch == patch[0]).all()
        outside = np.ones(image.shape[:2], bool)  # the rest of the image is as it was
        for x0, y0, x1, y1 in now[len(old):]:
            outside[y0:y1, x0:x1] = False
        assert np.array_equal(image[outside], original[outside])
    assert pasted > 0  # the check above looked at something


def test_the_same_draws_give_the_same_pastes_and_probability_zero_gives_none():
    images, targets = batch(3)
    a = copy_paste(images, targets, np.random.default_rng(7), probability=1.0)
    b = copy_paste(images, targets, np.random.default_rng(7), probability=1.0)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a[1], b[1]))
    none = copy_paste(images, targets, np.random.default_rng(7), probability=0.0)
    assert all(x is y for x, y in zip(none[0], images))


def test_a_batch_of_one_or_without_boxes_is_left_alone():
    images, targets = batch(5, size=1)
    assert copy_paste(images, targets, np.random.default_rng(0), probability=1.0)[0][0] is images[0]
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    pictures = [np.zeros((40, 40, 3), np.uint8)] * 2
    assert copy_paste(pictures, empty, np.random.default_rng(0), probability=1.0)[1][0] is empty[0]

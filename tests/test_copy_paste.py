"""Copy-paste augmentation (`core.copy_paste`): pasted boxes are tight and inside the image, never
over an existing box, the sources stay untouched, and the same draws give the same pastes; on a
plain background the object is cut out of its box, on a cluttered one the box is pasted whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.boxes import box_cxcywhn_to_xyxy, box_xyxy_to_cxcywhn
from core.copy_paste import copy_paste, object_alpha


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


def star_on_gradient(seed: int = 0, fragment: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A tight crop of a star on a colour gradient with noise (as the shapes domain draws them) and the
    star's own mask; with ``fragment`` a piece of another object sits in a corner, apart from the star."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 30.0, 12.0)
    points = np.column_stack([radii * np.cos(angles), -radii * np.sin(angles)])
    points -= points.min(0)
    width, height = int(np.ceil(points[:, 0].max())) + 1, int(np.ceil(points[:, 1].max())) + 1
    mask_image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask_image).polygon([tuple(p) for p in points], fill=255)
    mask = np.asarray(mask_image) > 127
    ys, xs = np.mgrid[0:height, 0:width]
    background = np.stack([120 + xs * 1.5, 60 + ys * 1.0, 200 - xs * 0.8], -1) + rng.normal(0, 6, (height, width, 3))
    crop = np.where(mask[..., None], np.array([230.0, 20, 90]), background)
    if fragment:
        crop[height - 6:, width - 6:] = [20, 200, 40]
    return np.clip(np.round(crop), 0, 255).astype(np.uint8), mask


@pytest.mark.parametrize("fragment", [False, True])
def test_an_object_on_a_plain_background_is_cut_out_of_its_box(fragment):
    crop, mask = star_on_gradient(fragment=fragment)
    alpha = object_alpha(crop)
    assert alpha is not None and alpha.shape == mask.shape and 0.0 <= alpha.min() and alpha.max() <= 1.0
    found = alpha > 0.5
    assert (found & mask).sum() / (found | mask).sum() > 0.95  # the star, not its background
    assert not found[-4:, -4:].any()  # nor a piece of another object apart from it
    rows, cols = np.flatnonzero(found.any(1)), np.flatnonzero(found.any(0))
    assert rows[0] <= 1 and rows[-1] >= mask.shape[0] - 2 and cols[0] <= 1 and cols[-1] >= mask.shape[1] - 2


def test_a_box_on_clutter_or_filled_by_its_object_is_pasted_whole():
    rng = np.random.default_rng(1)
    assert object_alpha(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) is None  # no plain background
    assert object_alpha(np.full((30, 30, 3), 200, np.uint8)) is None  # an upright square fills its box
    assert object_alpha(np.zeros((3, 30, 3), np.uint8)) is None  # too thin to tell


def plain_batch(seed: int, size: int = 4):
    """Images with a dark colour gradient plus noise and bright, non-overlapping stars and triangles
    (tight boxes from their masks): every object is on a plain background and far from any background."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(size):
        height, width = int(rng.integers(100, 160)), int(rng.integers(100, 160))
        ys, xs = np.mgrid[0:height, 0:width]
        start, slope = rng.uniform(10, 50, 3), rng.uniform(-0.15, 0.15, 3)
        picture = Image.fromarray(np.clip(start + xs[..., None] * slope + rng.normal(0, 6, (height, width, 3)),
                                          0, 255).astype(np.uint8))
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, 4))):
            points = 5 if rng.random() < 0.5 else 3
            radius, cx, cy = rng.uniform(8, 20), rng.uniform(25, width - 25), rng.uniform(25, height - 25)
            angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * points) * np.pi / points
            radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * (0.4 if points == 5 else 1.0))
            polygon = [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)]
            mask_image = Image.new("L", (width, height), 0)
            ImageDraw.Draw(mask_image).polygon(polygon, fill=255)
            rows, cols = np.flatnonzero(np.asarray(mask_image).any(1)), np.flatnonzero(np.asarray(mask_image).any(0))
            box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            if any(min(box[2], b[2]) > max(box[0], b[0]) and min(box[3], b[3]) > max(box[1], b[1]) for b in boxes):
                continue
            ImageDraw.Draw(picture).polygon(polygon, fill=tuple(int(v) for v in rng.integers(190, 255, 3)))
            boxes.append(box)
            labels.append(int(points == 5))
        images.append(np.asarray(picture))
        targets.append({"class_labels": torch.tensor(labels, dtype=torch.long),
                        "boxes": box_xyxy_to_cxcywhn(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                     width, height)})
    return images, targets


@pytest.mark.parametrize("seed", range(6))
def test_blended_pastes_are_tight_inside_and_never_over_an_existing_box(seed, blend=True):
    images, targets = plain_batch(seed)
    new_images, new_targets = copy_paste(images, targets, np.random.default_rng(seed), probability=1.0, blend=blend)
    pasted = 0
    for image, before, after, original in zip(new_images, targets, new_targets, images):
        old, now = pixel_boxes(original, before), pixel_boxes(image, after)
        assert np.array_equal(now[:len(old)], old)
        bright = image.min(-1) > 150  # object pixels: every background is dark
        height, width = image.shape[:2]
        near = np.zeros(bright.shape, bool)
        for x0, y0, x1, y1 in now[len(old):]:
            pasted += 1
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            for ox0, oy0, ox1, oy1 in now[:len(old)]:
                assert min(x1, ox1) <= max(x0, ox0) or min(y1, oy1) <= max(y0, oy0)
            inside = bright[y0:y1, x0:x1]  # tight: the pasted object reaches every edge of its box ...
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            # ... and came without its background: its box's corners (outside a star or triangle) keep this image's
            corners = [(y0, x0), (y0, x1 - 1), (y1 - 1, x0), (y1 - 1, x1 - 1)]
            assert sum(np.array_equal(image[c], original[c]) for c in corners) >= 2
            near[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
        for x0, y0, x1, y1 in old:
            near[y0:y1, x0:x1] = True
        assert not (bright & ~near).any()  # no object pixel outside a box
    assert pasted > 0


def test_the_blend_check_would_catch_a_pasted_rectangle():
    with pytest.raises(AssertionError):
        test_blended_pastes_are_tight_inside_and_never_over_an_existing_box(0, blend=False)

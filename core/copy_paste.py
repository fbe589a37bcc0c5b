"""Copy-paste augmentation with boxes (Ghiasi et al., "Simple Copy-Paste", CVPR 2021), for data
with boxes but no masks: an object is its box's pixels, pasted whole into another image of the
batch, so a few dozen reviewed images give many distinct training views (a new class appears in
scenes it was never reviewed in).

Without masks the box's own background would come along as a visible rectangle (and with it any
part of a neighbouring object inside the box, unlabelled). So when the box's border ring is a plain
background — a colour plane (a gradient) plus noise, as on a studio shot, a document or the shapes
domain — the object is cut out of it (``blend``, `object_alpha`): pixels far from that plane, the
largest connected part, with soft edges. On a cluttered border it is pasted as its rectangle.

Rules, each tested: a pasted box is tight around what was pasted (inside the image, at least 2 px a
side); it never overlaps a box already in the image (an existing object is never hidden, even in
part) nor another pasted one; the source image is not changed; an image labelled only for some
classes (``known_classes``: a replay image) receives only objects of those classes.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from core.boxes import box_cxcywhn_to_xyxy, box_mask_to_xyxy, box_xyxy_to_cxcywhn

PLACEMENT_TRIES = 20  # random positions tried per object before it is skipped
BORDER_INLIER = 30.0  # RGB distance from the border's colour plane within which a border pixel is background
TRIM_ROUNDS = 3
PLAIN_BORDER = 0.5  # at least this share of the border must be background ...
BORDER_NOISE = 15.0  # ... with at most this RMS distance from the plane, or the object is pasted as its rectangle


def _plane(design: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Least-squares colour plane ``[3, 3]`` through ``colours [N, 3]`` at ``design [N, 3]`` rows (1, x, y)."""
    return np.linalg.lstsq(design, colours, rcond=None)[0]


def object_alpha(crop: np.ndarray) -> np.ndarray | None:
    """``[h, w]`` opacity in [0, 1] of the object in ``crop`` (the pixels of its tight box), or None
    when the box's border is not a plain background (then the rectangle is pasted whole)."""
    height, width = crop.shape[:2]
    if height < 4 or width < 4:
        return None
    pixels = crop.astype(np.float64)
    ys, xs = np.mgrid[0:height, 0:width]
    ring = (ys == 0) | (ys == height - 1) | (xs == 0) | (xs == width - 1)
    grid = np.stack([np.ones_like(xs), xs, ys], -1).astype(np.float64)  # (1, x, y) per pixel
    design, colours = grid[ring], pixels[ring]
    fitted = np.ones(len(design), dtype=bool)
    for _ in range(TRIM_ROUNDS):  # trimmed least squares: the object covers part of the ring (an edge, a few tips)
        residual = np.linalg.norm(colours - design @ _plane(design[fitted], colours[fitted]), axis=1)
        fitted = residual <= np.quantile(residual, 0.5)
    inliers = residual < BORDER_INLIER
    if inliers.mean() < PLAIN_BORDER:  # e.g. an upright square fills its box: the rectangle is the object
        return None
    background = grid @ _plane(design[inliers], colours[inliers])
    distance = np.linalg.norm(pixels - background, axis=-1)
    noise = float(np.sqrt(np.mean(distance[ring][inliers] ** 2)))
    if noise > BORDER_NOISE:
        return None
    low = 2.5 * max(noise, 4.0)
    alpha = np.clip((distance - low) / 20.0, 0.0, 1.0)
    parts, count = ndimage.label(alpha > 0.5)
    if count == 0:
        return None
    largest = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
    x0, y0, x1, y1 = box_mask_to_xyxy(largest)
    if y1 - y0 < 0.8 * height or x1 - x0 < 0.8 * width:
        return None  # what was found does not fill the box: not this object alone
    return alpha * ndimage.binary_dilation(largest)


def _overlaps(box: np.ndarray, boxes: np.ndarray) -> bool:
    if not len(boxes):
        return False
    return bool(((np.minimum(box[2], boxes[:, 2]) > np.maximum(box[0], boxes[:, 0]))
                 & (np.minimum(box[3], boxes[:, 3]) > np.maximum(box[1], boxes[:, 1]))).any())


def copy_paste(images: list[np.ndarray], targets: list[dict], rng: np.random.Generator, probability: float = 0.5,
               max_objects: int = 3, blend: bool = True) -> tuple[list[np.ndarray], list[dict]]:
    """Paste up to ``max_objects`` objects of another image of the batch into each image (with
    ``probability``). ``images``: ``[H, W, 3]`` uint8 arrays; ``targets``: the transformers contract
    (``class_labels [N]``, ``boxes [N, 4]`` normalized cxcywh). ``blend``: cut objects out of a plain
    background (`object_alpha`) instead of pasting their rectangles. Returns new lists; the inputs
    are not modified. Draws only from ``rng``, so a resumed run repeats the same pastes."""
    pixel_boxes = []
    for image, target in zip(images, targets):
        height, width = image.shape[:2]
        xyxy = box_cxcywhn_to_xyxy(target["boxes"].detach().cpu().double(), width, height).numpy()
        pixel_boxes.append(np.round(xyxy).astype(int).reshape(-1, 4))
    out_images, out_targets = [], []
    for i, (image, target) in enumerate(zip(images, targets)):
        sources = [j for j in range(len(images)) if j != i and len(pixel_boxes[j])]
        if not sources or rng.random() >= probability:
            out_images.append(image)
            out_targets.append(target)
            continue
        j = sources[int(rng.integers(len(sources)))]
        height, width = image.shape[:2]
        canvas = image.copy()
        occupied = pixel_boxes[i].copy()
        labels = target["class_labels"].tolist()
        added_boxes, added_labels = [], []
        count = int(rng.integers(1, max_objects + 1))
        known = target.get("known_classes")  # a replay image: only objects of the classes it is labelled for
        for k in rng.permutation(len(pixel_boxes[j]))[:count]:
            if known is not None and not bool(known[int(targets[j]["class_labels"][k])]):
                continue
            x0, y0, x1, y1 = pixel_boxes[j][k]
            source_h, source_w = images[j].shape[:2]
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, source_w), min(y1, source_h)
            w, h = x1 - x0, y1 - y0
            if w < 2 or h < 2 or w > width or h > height:
                continue
            for _ in range(PLACEMENT_TRIES):
                px, py = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                placed = np.array([px, py, px + w, py + h])
                if not _overlaps(placed, occupied):
                    crop = images[j][y0:y1, x0:x1]
                    alpha = object_alpha(crop) if blend else None
                    if alpha is None:
                        canvas[py:py + h, px:px + w] = crop
                    else:  # the box shrinks to what is pasted (soft edges below half opacity are not the object)
                        region = canvas[py:py + h, px:px + w].astype(np.float64)
                        mixed = alpha[..., None] * crop + (1 - alpha[..., None]) * region
                        canvas[py:py + h, px:px + w] = np.round(mixed).clip(0, 255).astype(np.uint8)
                        box = box_mask_to_xyxy(alpha > 0.5) + np.array([px, py, px, py])
                    occupied = np.vstack([occupied, placed[None]])  # the whole rectangle: its soft edges too
                    added_boxes.append(placed if alpha is None else box)
                    added_labels.append(int(targets[j]["class_labels"][k]))
                    break
        if not added_boxes:
            out_images.append(image)
            out_targets.append(target)
            continue
        new = box_xyxy_to_cxcywhn(torch.tensor(np.array(added_boxes), dtype=torch.float32), width, height)
        out_images.append(canvas)
        out_targets.append({**target, "class_labels": torch.tensor(labels + added_labels, dtype=torch.long),
                            "boxes": torch.cat([target["boxes"].float().reshape(-1, 4), new]).to(target["boxes"])})
    return out_images, out_targets

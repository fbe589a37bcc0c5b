"""Copy-paste augmentation with boxes (Ghiasi et al., "Simple Copy-Paste", CVPR 2021), for data
with boxes but no masks: an object is its box's pixels, pasted whole into another image of the
batch, so a few dozen reviewed images give many distinct training views (a new class appears in
scenes it was never reviewed in).

Rules, each tested: a pasted box is exactly the pasted rectangle (tight, inside the image, at
least 2 px a side); it never overlaps a box already in the image (an existing object is never
hidden, even in part) nor another pasted one; the source image is not changed; an image labelled
only for some classes (``known_classes``: a replay image) receives only objects of those classes.
"""

from __future__ import annotations

import numpy as np
import torch

from core.boxes import box_cxcywhn_to_xyxy, box_xyxy_to_cxcywhn

PLACEMENT_TRIES = 20  # random positions tried per object before it is skipped


def _overlaps(box: np.ndarray, boxes: np.ndarray) -> bool:
    if not len(boxes):
        return False
    return bool(((np.minimum(box[2], boxes[:, 2]) > np.maximum(box[0], boxes[:, 0]))
                 & (np.minimum(box[3], boxes[:, 3]) > np.maximum(box[1], boxes[:, 1]))).any())


def copy_paste(images: list[np.ndarray], targets: list[dict], rng: np.random.Generator, probability: float = 0.5,
               max_objects: int = 3) -> tuple[list[np.ndarray], list[dict]]:
    """Paste up to ``max_objects`` objects of another image of the batch into each image (with
    ``probability``). ``images``: ``[H, W, 3]`` uint8 arrays; ``targets``: the transformers contract
    (``class_labels [N]``, ``boxes [N, 4]`` normalized cxcywh). Returns new lists; the inputs are
    not modified. Draws only from ``rng``, so a resumed run repeats the same pastes."""
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
                    canvas[py:py + h, px:px + w] = images[j][y0:y1, x0:x1]
                    occupied = np.vstack([occupied, placed[None]])
                    added_boxes.append(placed)
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

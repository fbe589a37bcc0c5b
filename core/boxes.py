"""Box formats and overlap measures. The only place in the project that does box arithmetic.

Formats (all ``[..., 4]``):

- ``cxcywh``: centre x, centre y, width, height (DETR's output, normalized to [0, 1]).
- ``xyxy``: top-left x, y and bottom-right x, y (pixels at the boundaries, as supervision uses).
- ``xywh``: top-left x, y, width, height in pixels (COCO annotations).
- ``xywhn``: top-left x, y, width, height normalized to [0, 1] (FiftyOne detections).
- ``cxcywhn``: ``cxcywh`` normalized to [0, 1] by the image size (DETR's boxes and training targets),
  named so where a function converts between it and pixels.

Every function works on torch tensors; the ``xywh``/``xywhn`` helpers also accept numpy arrays
because COCO and FiftyOne hand us Python lists.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayOrTensor = torch.Tensor | np.ndarray


def _stack(parts: list, like: ArrayOrTensor, dim: int = -1) -> ArrayOrTensor:
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=dim)
    return np.stack(parts, axis=dim)


def _coordinates(boxes: ArrayOrTensor, dim: int) -> tuple:
    return tuple(boxes.unbind(dim)) if isinstance(boxes, torch.Tensor) else tuple(np.moveaxis(boxes, dim, 0))


def box_cxcywh_to_xyxy(boxes: ArrayOrTensor, dim: int = -1) -> ArrayOrTensor:
    """Centre/size boxes to corner boxes, in the same units; the 4 coordinates lie along ``dim``
    (``[..., 4]`` by default; the matcher keeps them in planes, ``[4, ...]``, for speed)."""
    cx, cy, w, h = _coordinates(boxes, dim)
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], boxes, dim)


def box_xyxy_to_cxcywh(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[..., 4]`` corner boxes to centre/size boxes, in the same units."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], boxes)


def box_xywh_to_xyxy(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """COCO ``[x, y, w, h]`` to ``[x0, y0, x1, y1]``, same units."""
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x, y, x + w, y + h], boxes)


def box_xyxy_to_xywh(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[x0, y0, x1, y1]`` to COCO ``[x, y, w, h]``, same units."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack([x0, y0, x1 - x0, y1 - y0], boxes)


def box_xywhn_to_xyxy(boxes: ArrayOrTensor, width: float, height: float) -> ArrayOrTensor:
    """FiftyOne's normalized ``[x, y, w, h]`` to pixel ``[x0, y0, x1, y1]`` for an image of this size."""
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x * width, y * height, (x + w) * width, (y + h) * height], boxes)


def box_xyxy_to_xywhn(boxes: ArrayOrTensor, width: float, height: float) -> ArrayOrTensor:
    """Pixel ``[x0, y0, x1, y1]`` to FiftyOne's normalized ``[x, y, w, h]`` for an image of this size."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack([x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height], boxes)


def box_cxcywhn_to_xyxy(boxes: ArrayOrTensor, width, height) -> ArrayOrTensor:
    """Normalized centre/size boxes (DETR's output) to pixel corners for an image of this size.

    ``width`` and ``height`` are numbers or anything that broadcasts against ``boxes[..., 0]``.
    """
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([(cx - 0.5 * w) * width, (cy - 0.5 * h) * height, (cx + 0.5 * w) * width,
                   (cy + 0.5 * h) * height], boxes)


def box_xyxy_to_cxcywhn(boxes: ArrayOrTensor, width, height) -> ArrayOrTensor:
    """Pixel corners to normalized centre/size boxes (the training-target format) for this image size."""
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return _stack([(x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height], boxes)


def box_xyxy_centers(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[..., 4]`` corner boxes -> ``[..., 2]`` centres ``(x, y)``, same units."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def box_cxcywhn_hflip(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """Normalized centre/size boxes of an image flipped left to right: ``cx -> 1 - cx``."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([1 - cx, cy, w, h], boxes)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[..., 4]`` xyxy boxes; inverted boxes count as zero, not negative."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU of corresponding xyxy boxes (broadcast; coordinates along ``dim``) -> ``(iou, union)``.

    Two zero-area boxes have IoU 0 (their union is 0; we divide by a tiny epsilon instead of
    producing NaN). The union is returned because GIoU needs it.
    """
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim)
    bx0, by0, bx1, by1 = boxes2.unbind(dim)
    inter = ((torch.min(ax1, bx1) - torch.max(ax0, bx0)).clamp(min=0)
             * (torch.min(ay1, by1) - torch.max(ay0, by0)).clamp(min=0))
    union = (ax1 - ax0).clamp(min=0) * (ay1 - ay0).clamp(min=0) + (bx1 - bx0).clamp(min=0) * (by1 - by0).clamp(min=0)
    union = union - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny), union


def paired_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Generalized IoU (https://giou.stanford.edu/) of corresponding xyxy boxes, broadcast, in [-1, 1].

    Boxes must not be inverted (x1 < x0); callers validate user boxes before they get here, so
    this only guards against the degenerate enclosing box.
    """
    iou, union = paired_box_iou(boxes1, boxes2, dim)
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim)
    bx0, by0, bx1, by1 = boxes2.unbind(dim)
    enclosing = ((torch.max(ax1, bx1) - torch.min(ax0, bx0)).clamp(min=0)
                 * (torch.max(ay1, by1) - torch.min(ay0, by0)).clamp(min=0))
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``(iou [N, M], union [N, M])``."""
    return paired_box_iou(boxes1[:, None], boxes2[None])


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes -> ``[N, M]``."""
    return paired_generalized_box_iou(boxes1[:, None], boxes2[None])


def clip_boxes_xyxy(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip ``[..., 4]`` xyxy pixel boxes to an image of this size."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def box_mask_to_xyxy(mask: np.ndarray) -> np.ndarray | None:
    """The tight xyxy pixel box ``[4]`` (int; x2, y2 exclusive) of a ``[H, W]`` bool mask, or None
    when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])

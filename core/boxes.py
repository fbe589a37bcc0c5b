"""Box formats and overlap measures. The only place in the project that does box arithmetic.

Formats (all ``[..., 4]``):

- ``cxcywh``: centre x, centre y, width, height (DETR's output, normalized to [0, 1]).
- ``xyxy``: top-left x, y and bottom-right x, y (pixels at the boundaries, as supervision uses).
- ``xywh``: top-left x, y, width, height in pixels (COCO annotations).
- ``xywhn``: top-left x, y, width, height normalized to [0, 1] (FiftyOne detections).

Every function works on torch tensors; the ``xywh``/``xywhn`` helpers also accept numpy arrays
because COCO and FiftyOne hand us Python lists.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayOrTensor = torch.Tensor | np.ndarray


def _stack(parts: list, like: ArrayOrTensor) -> ArrayOrTensor:
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def box_cxcywh_to_xyxy(boxes: ArrayOrTensor) -> ArrayOrTensor:
    """``[..., 4]`` centre/size boxes to corner boxes, in the same units."""
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], boxes)


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


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of ``[N, 4]`` xyxy boxes; inverted boxes count as zero, not negative."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes.

    Returns ``(iou [N, M], union [N, M])``; the union is returned because GIoU needs it.
    Two zero-area boxes have IoU 0 (their union is 0; we divide by a tiny epsilon instead of
    producing NaN).
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny), union


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise generalized IoU (https://giou.stanford.edu/) of ``[N, 4]`` and ``[M, 4]`` xyxy boxes.

    Returns ``[N, M]`` in [-1, 1]. Boxes must not be inverted (x1 < x0); callers validate user
    boxes before they get here, so this only guards against the degenerate enclosing box.
    """
    iou, union = box_iou(boxes1, boxes2)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=torch.finfo(enclosing.dtype).tiny)


def clip_boxes_xyxy(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Clip ``[..., 4]`` xyxy pixel boxes to an image of this size."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)

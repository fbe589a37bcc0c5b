"""ATSS anchors and assignment (Zhang et al., CVPR 2020), as Co-DETR's auxiliary head uses them.

One square anchor per feature-map location and level, of side ``scale * stride`` centred on the
location; for each ground-truth box the ``topk`` anchors of each level whose centres are closest
to its centre are candidates; the box's IoU threshold is the mean plus the standard deviation of
its candidates' IoUs; a candidate is positive when its IoU reaches the threshold and its centre
lies inside the box. An anchor that is positive for several boxes goes to the one it overlaps
most (the lowest box index on an exact tie).

Everything is in pixels of the padded input, boxes ``xyxy``. Only the assignment lives here; the
head that uses it is separate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.boxes import box_iou

CENTRE_MARGIN = 0.01  # px: a centre on the box edge is not inside (as the reference implementation)


def make_anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], scale: float = 8.0,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors of every level: ``(anchors [A, 4] xyxy px, level [A])``, level by level, row-major.

    Args:
        feature_sizes: ``(height, width)`` of each level's feature map.
        strides: each level's stride in input pixels.
        scale: anchor side in strides (ATSS and Co-DETR use 8).
    """
    if len(feature_sizes) != len(strides):
        raise ValueError(f"{len(feature_sizes)} feature sizes but {len(strides)} strides.")
    anchors, levels = [], []
    for level, ((height, width), stride) in enumerate(zip(feature_sizes, strides)):
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        half = scale * stride / 2
        anchors.append(torch.stack([cx - half, cy - half, cx + half, cy + half], -1).reshape(-1, 4))
        levels.append(torch.full((height * width,), level, dtype=torch.long, device=device))
    return torch.cat(anchors), torch.cat(levels)


def _centres(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, levels: torch.Tensor, gt_boxes: torch.Tensor, topk: int = 9
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign anchors to ground-truth boxes.

    Args:
        anchors: ``[A, 4]`` xyxy px; levels: ``[A]`` level index of each anchor.
        gt_boxes: ``[G, 4]`` xyxy px (G may be 0).
        topk: candidates per box and level.

    Returns:
        ``(assigned [A], iou [A])``: the index of the box each anchor is positive for, -1 for a
        negative; and that anchor's IoU with its box (0 for negatives).
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0 or num_anchors == 0:
        return assigned, torch.zeros(num_anchors, device=anchors.device)
    iou, _ = box_iou(anchors, gt_boxes)  # [A, G]
    distance = torch.cdist(_centres(anchors), _centres(gt_boxes))  # [A, G]
    candidate = torch.zeros_like(iou, dtype=torch.bool)
    columns = torch.arange(num_gt, device=anchors.device)
    for level in levels.unique():
        index = (levels == level).nonzero().squeeze(1)
        k = min(topk, index.numel())
        nearest = distance[index].topk(k, dim=0, largest=False).indices  # [k, G]
        candidate[index[nearest], columns.expand(k, -1)] = True
    count = candidate.sum(0)  # [G]
    candidate_iou = torch.where(candidate, iou, torch.zeros_like(iou))
    mean = candidate_iou.sum(0) / count
    # unbiased standard deviation over each box's candidates, as torch.std (the reference uses it)
    variance = (torch.where(candidate, iou - mean, torch.zeros_like(iou)) ** 2).sum(0) / (count - 1).clamp(min=1)
    threshold = mean + variance.sqrt()
    centres = _centres(anchors)
    margin = torch.stack([centres[:, None, 0] - gt_boxes[None, :, 0], centres[:, None, 1] - gt_boxes[None, :, 1],
                          gt_boxes[None, :, 2] - centres[:, None, 0], gt_boxes[None, :, 3] - centres[:, None, 1]],
                         -1).amin(-1)  # [A, G]
    positive = candidate & (iou >= threshold) & (margin > CENTRE_MARGIN)
    claimed = torch.where(positive, iou, torch.full_like(iou, -1.0))
    best_iou, best_gt = claimed.max(1)  # max returns the first index on ties
    has_box = best_iou >= 0
    assigned[has_box] = best_gt[has_box]
    return assigned, torch.where(has_box, best_iou, torch.zeros_like(best_iou))

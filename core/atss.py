"""ATSS anchors and assignment (Zhang et al., CVPR 2020), as Co-DETR's auxiliary head uses them.

One square anchor per feature-map location and level, of side ``scale * stride`` centred on the
location; for each ground-truth box the ``topk`` anchors of each level whose centres are closest
to its centre are candidates; the box's IoU threshold is the mean plus the standard deviation of
its candidates' IoUs; a candidate is positive when its IoU reaches the threshold and its centre
lies inside the box. An anchor that is positive for several boxes goes to the one it overlaps
most (the lowest box index on an exact tie).

Everything is in pixels of the padded input, boxes ``xyxy``. Also here: Co-DETR's auxiliary ATSS
head (towers, class / box / centerness outputs, per-level scales) and its loss (focal, GIoU
weighted by centerness, centerness BCE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from core.boxes import box_iou, box_xyxy_centers

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


@torch.no_grad()
def atss_assign(anchors: torch.Tensor, levels: torch.Tensor, gt_boxes: torch.Tensor, topk: int = 9,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign anchors to ground-truth boxes.

    Args:
        anchors: ``[A, 4]`` xyxy px; levels: ``[A]`` level index of each anchor.
        gt_boxes: ``[G, 4]`` xyxy px (G may be 0).
        topk: candidates per box and level (at most the level's valid anchors).
        valid: ``[A]`` bool, the anchors of this image (not of the batch's padding). Only they take
            part, as in the reference (mmdet assigns over the anchors inside the image): padding
            anchors would lower each box's mean + std threshold and make an image's positives
            depend on its batch neighbours. None: all anchors.

    Returns:
        ``(assigned [A], iou [A])``: the index of the box each anchor is positive for, -1 for a
        negative (always for an invalid anchor); and that anchor's IoU with its box (0 for negatives).
    """
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if valid is not None and not bool(valid.all()):
        inside = valid.nonzero().squeeze(1)
        sub_assigned, sub_iou = atss_assign(anchors[inside], levels[inside], gt_boxes, topk)
        iou = torch.zeros(num_anchors, device=anchors.device)
        assigned[inside], iou[inside] = sub_assigned, sub_iou
        return assigned, iou
    if num_gt == 0 or num_anchors == 0:
        return assigned, torch.zeros(num_anchors, device=anchors.device)
    iou, _ = box_iou(anchors, gt_boxes)  # [A, G]
    distance = torch.cdist(box_xyxy_centers(anchors), box_xyxy_centers(gt_boxes))  # [A, G]
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
    centres = box_xyxy_centers(anchors)
    margin = torch.stack([centres[:, None, 0] - gt_boxes[None, :, 0], centres[:, None, 1] - gt_boxes[None, :, 1],
                          gt_boxes[None, :, 2] - centres[:, None, 0], gt_boxes[None, :, 3] - centres[:, None, 1]],
                         -1).amin(-1)  # [A, G]
    positive = candidate & (iou >= threshold) & (margin > CENTRE_MARGIN)
    claimed = torch.where(positive, iou, torch.full_like(iou, -1.0))
    best_iou, best_gt = claimed.max(1)  # max returns the first index on ties
    has_box = best_iou >= 0
    assigned[has_box] = best_gt[has_box]
    return assigned, torch.where(has_box, best_iou, torch.zeros_like(best_iou))


class Scale(nn.Module):
    """A learned scalar per level for the box branch (FCOS/ATSS: levels see different box sizes)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ATSSHead(nn.Module):
    """Co-DETR's auxiliary ATSS head: per level, a classification tower and a box tower of
    ``num_convs`` 3x3 conv + GroupNorm + ReLU, then class logits, box deltas and a centerness logit
    per location (one anchor per location).

    Outputs, levels concatenated in `make_anchors` order: ``logits [B, A, C]``, ``deltas [B, A, 4]``
    (``dx, dy`` in anchor sides, ``dw, dh`` as log-scales), ``centerness [B, A]``.
    """

    def __init__(self, d_model: int, num_classes: int, num_levels: int, num_convs: int = 1, prior_prob: float = 0.01):
        super().__init__()
        from core.pyramid import group_norm

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(d_model, d_model, 3, padding=1), group_norm(d_model), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.Conv2d(d_model, num_classes, 3, padding=1)
        self.box = nn.Conv2d(d_model, 4, 3, padding=1)
        self.centerness = nn.Conv2d(d_model, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for module in self.modules():  # the reference's init: every conv Normal(0, 0.01), bias 0...
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.cls.bias, -math.log((1 - prior_prob) / prior_prob))  # ...but rare positives at first

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, deltas, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_feature, box_feature = self.cls_tower(feature), self.box_tower(feature)
            logits.append(self.cls(cls_feature).flatten(2).transpose(1, 2))
            deltas.append(self.scales[level](self.box(box_feature)).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(box_feature).flatten(2).squeeze(1))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.cat(centerness, 1)


DELTA_STDS = (0.1, 0.1, 0.2, 0.2)  # the reference's box coder (mmdet DeltaXYWHBBoxCoder in Co-DETR's ATSS head)
MAX_LOG_RATIO = abs(math.log(16 / 1000))  # its clamp of dw, dh, both ways


def decode_boxes(anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Anchors ``[A, 4]`` xyxy and deltas ``[..., A, 4]`` -> boxes ``[..., A, 4]`` xyxy (px).

    As the reference coder: the deltas are scaled by `DELTA_STDS` first (an output of 1 moves the
    centre by a tenth of the anchor, not a whole anchor), ``dw, dh`` clamped to +-`MAX_LOG_RATIO`."""
    stds = deltas.new_tensor(DELTA_STDS)
    scaled = deltas * stds
    size = anchors[:, 2:] - anchors[:, :2]
    centre = box_xyxy_centers(anchors) + scaled[..., :2] * size
    half = size * scaled[..., 2:].clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp() / 2
    return torch.cat([centre - half, centre + half], -1)


def centerness_target(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS centerness of each anchor centre inside its box: ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``."""
    centre = box_xyxy_centers(anchors)
    left_top = centre - boxes[:, :2]
    right_bottom = boxes[:, 2:] - centre
    ratio = (torch.minimum(left_top, right_bottom).clamp(min=0)
             / torch.maximum(left_top, right_bottom).clamp(min=1e-6))
    return (ratio[:, 0] * ratio[:, 1]).sqrt()


def _mean_over_processes(value: float, device: torch.device) -> float:
    """``value`` averaged over the processes of a distributed run (mmdet's reduce_mean); itself otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor(value, dtype=torch.float32, device=device)
    torch.distributed.all_reduce(tensor)
    return float(tensor) / torch.distributed.get_world_size()


def atss_loss(logits: torch.Tensor, deltas: torch.Tensor, centerness: torch.Tensor, anchors: torch.Tensor,
              targets: Sequence[dict[str, torch.Tensor]], assigned: Sequence[torch.Tensor],
              valid: torch.Tensor | None = None, focal_alpha: float = 0.25, focal_gamma: float = 2.0
              ) -> dict[str, torch.Tensor]:
    """Focal classification and centerness BCE averaged over the batch's positive anchors, and GIoU
    averaged with the centerness targets as weights; as the reference, both normalisers are
    averaged over the processes of a distributed run and are at least 1 (images without boxes give
    a finite loss, and a few low-centerness positives cannot blow the GIoU term up).

    Args:
        logits ``[B, A, C]``, deltas ``[B, A, 4]``, centerness ``[B, A]``: the head's outputs.
        anchors: ``[A, 4]`` xyxy px, from `make_anchors`.
        targets: per image ``class_labels [N]`` and ``boxes_xyxy [N, 4]`` in input pixels.
        assigned: per image ``[A]``, the `atss_assign` result (box index, -1 for a negative).
        valid: ``[B, A]`` anchors to count (e.g. centres inside the image, not its padding); all if None.
    Computed in float32 whatever the autocast dtype of the inputs.
    """
    from core.boxes import paired_generalized_box_iou
    from core.losses import known_classes, sigmoid_focal_loss

    logits, deltas, centerness = logits.float(), deltas.float(), centerness.float()
    class_targets = torch.zeros_like(logits)
    giou_terms, centerness_terms, weights = [], [], []
    positives = 0
    for b, (target, image_assigned) in enumerate(zip(targets, assigned)):
        boxes = target["boxes_xyxy"].float()
        positive = image_assigned >= 0
        if not positive.any():
            continue
        positives += int(positive.sum())
        matched = boxes[image_assigned[positive]]
        class_targets[b, positive, target["class_labels"][image_assigned[positive]]] = 1.0
        predicted = decode_boxes(anchors[positive], deltas[b, positive])
        weight = centerness_target(anchors[positive], matched)
        giou_terms.append(((1 - paired_generalized_box_iou(predicted, matched)) * weight).sum())
        weights.append(weight.sum())
        centerness_terms.append(F.binary_cross_entropy_with_logits(centerness[b, positive], weight, reduction="sum"))
    normalizer = max(_mean_over_processes(float(positives), logits.device), 1.0)
    giou_normalizer = max(_mean_over_processes(float(torch.stack(weights).sum()) if weights else 0.0, logits.device), 1.0)
    zero = deltas.sum() * 0 + centerness.sum() * 0  # keeps the graph when nothing is positive
    focal = sigmoid_focal_loss(logits, class_targets, focal_alpha, focal_gamma)
    if valid is not None:
        focal = focal * valid[..., None].to(focal.dtype)
    known = known_classes(targets, logits.shape[-1], logits.device)  # replay images: other classes not labelled
    if known is not None:
        focal = focal * known[:, None, :].to(focal.dtype)
    return {
        "loss_atss_cls": focal.sum() / normalizer,
        # as ATSS: the GIoU loss is averaged with the centerness targets as weights
        "loss_atss_giou": torch.stack(giou_terms).sum() / giou_normalizer if giou_terms else zero,
        "loss_atss_centerness": (torch.stack(centerness_terms).sum() if centerness_terms else zero) / normalizer,
    }

"""Bipartite matching of predictions to targets: the Hungarian matcher of DETR and Conditional DETR.

One implementation serves training (the set criterion), the review tools (matching predictions to
reviewed truth) and the benchmarks. It is fast by construction:

- each image's cost block ``[Q, T_b]`` is built on its own, never the full ``[B*Q, sum T]`` matrix
  (whose off-diagonal blocks transformers computes and throws away);
- all decoder layers are matched in one call, and every cost block goes to the host in a single
  transfer, so a GPU synchronizes once per training step rather than once per layer.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from core.boxes import box_cxcywh_to_xyxy, generalized_box_iou

Matches = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    """Assigns each target one prediction, minimizing the DETR matching cost.

    cost = class_weight * class_cost + bbox_weight * L1(cxcywh) + giou_weight * (-GIoU)

    Class cost:
        ``"softmax"`` (DETR): ``-p[target class]`` (the NLL approximated by ``1 - p``; the 1 does
        not change the matching).
        ``"focal"`` (Conditional / Deformable DETR): the focal-loss difference
        ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` at the target class.

    Args:
        class_weight, bbox_weight, giou_weight: the cost weights (DETR 1/5/2, Conditional DETR 2/5/2).
        class_cost: ``"softmax"`` or ``"focal"``.
        focal_alpha, focal_gamma: the focal cost's parameters.
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        class_cost: str = "softmax",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_cost not in ("softmax", "focal"):
            raise ValueError(f"class_cost must be 'softmax' or 'focal', got {class_cost!r}.")
        if class_weight == 0 and bbox_weight == 0 and giou_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero.")
        self.class_weight, self.bbox_weight, self.giou_weight = class_weight, bbox_weight, giou_weight
        self.class_cost, self.focal_alpha, self.focal_gamma = class_cost, focal_alpha, focal_gamma

    @classmethod
    def for_model(cls, kind: str) -> HungarianMatcher:
        """The published matcher of ``"detr"`` (1/5/2, softmax) or ``"conditional_detr"`` (2/5/2, focal)."""
        if kind == "detr":
            return cls(1.0, 5.0, 2.0, "softmax")
        if kind == "conditional_detr":
            return cls(2.0, 5.0, 2.0, "focal")
        raise ValueError(f"no matcher for model kind {kind!r}; expected 'detr' or 'conditional_detr'.")

    def _class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if self.class_cost == "softmax" else logits.sigmoid()

    def cost_block(self, probs: torch.Tensor, boxes: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Matching cost of one image: probs ``[..., Q, C]``, boxes ``[..., Q, 4]`` -> ``[..., Q, T]``.

        Leading dimensions (decoder layers) are kept, so all layers are costed in one call.
        """
        labels, target_boxes = target["class_labels"], target["boxes"].to(boxes.dtype)
        prob = probs[..., labels]  # [..., Q, T]
        if self.class_cost == "softmax":
            class_cost = -prob
        else:
            alpha, gamma = self.focal_alpha, self.focal_gamma
            negative = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
            positive = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
            class_cost = positive - negative
        bbox_cost = torch.cdist(boxes, target_boxes.expand(*boxes.shape[:-2], -1, 4), p=1)
        flat = box_cxcywh_to_xyxy(boxes.reshape(-1, 4))
        giou = generalized_box_iou(flat, box_cxcywh_to_xyxy(target_boxes)).view(*boxes.shape[:-1], -1)
        cost = self.bbox_weight * bbox_cost + self.class_weight * class_cost - self.giou_weight * giou
        # NaN/inf (a diverging model) must not crash scipy: such pairs become the least attractive.
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    @torch.no_grad()
    def match_layers(
        self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> list[Matches]:
        """Match every decoder layer at once.

        Args:
            logits: ``[L, B, Q, C]`` class logits of L decoder layers.
            boxes: ``[L, B, Q, 4]`` normalized cxcywh boxes.
            targets: B dicts with ``class_labels [T_b]`` and ``boxes [T_b, 4]`` (normalized cxcywh).

        Returns:
            For each layer, for each image, ``(query_indices, target_indices)`` int64 CPU tensors of
            length ``min(Q, T_b)``; images with no targets get two empty tensors.
        """
        num_layers, batch, num_queries = logits.shape[:3]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images.")
        probs = self._class_probabilities(logits.float())
        boxes = boxes.float()
        sizes = [int(t["class_labels"].shape[0]) for t in targets]
        blocks = [self.cost_block(probs[:, b], boxes[:, b], t).flatten() for b, t in enumerate(targets) if sizes[b]]
        host = torch.cat(blocks).cpu().numpy() if blocks else np.zeros(0, dtype=np.float32)  # the one transfer

        empty = torch.zeros(0, dtype=torch.int64)
        per_image: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        offset = 0
        for size in sizes:
            if size == 0:
                per_image.append([(empty, empty)] * num_layers)
                continue
            block = host[offset : offset + num_layers * num_queries * size].reshape(num_layers, num_queries, size)
            offset += block.size
            pairs = []
            for layer_cost in block:
                rows, cols = linear_sum_assignment(layer_cost)
                pairs.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
            per_image.append(pairs)
        return [[per_image[b][layer] for b in range(batch)] for layer in range(num_layers)]

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> Matches:
        """Match one set of predictions: logits ``[B, Q, C]``, boxes ``[B, Q, 4]`` -> per image (i, j)."""
        return self.match_layers(logits[None], boxes[None], targets)[0]

    def total_cost(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict], matches: Matches) -> float:
        """Sum of the matching cost over matched pairs, in float64 (to compare assignments)."""
        probs = self._class_probabilities(logits.double())
        total = 0.0
        for b, (target, (rows, cols)) in enumerate(zip(targets, matches)):
            if len(rows):
                double_target = {"class_labels": target["class_labels"], "boxes": target["boxes"].double()}
                total += float(self.cost_block(probs[b], boxes[b].double(), double_target)[rows, cols].sum())
        return total

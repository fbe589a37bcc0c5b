"""Bipartite matching of predictions to targets: the Hungarian matcher of DETR and Conditional DETR.

One implementation serves training (the set criterion), the review tools (matching predictions to
reviewed truth) and the benchmarks. It is fast by construction:

- only each image's own pairs are costed (``Q * sum(T_b)``, as one flat list in a fixed number of
  kernels), never the full ``[B*Q, sum T]`` matrix whose off-diagonal blocks transformers computes
  and throws away;
- all decoder layers are matched in one call, and every cost block goes to the host in a single
  transfer, so a GPU synchronizes once per training step rather than once per layer.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from core.boxes import box_cxcywh_to_xyxy, paired_generalized_box_iou
from core.family import ModelFamily

Matches = list[tuple[torch.Tensor, torch.Tensor]]


class HungarianMatcher(nn.Module):
    """Assigns each target one prediction, minimizing the DETR matching cost.

    cost = class_weight * class_cost + bbox_weight * L1(cxcywh) + giou_weight * (-GIoU)

    Class cost:
        with a no-object column (DETR, softmax scores): ``-p[target class]`` (the NLL approximated
        by ``1 - p``; the 1 does not change the matching).
        without (Conditional / Deformable DETR, sigmoid scores): the focal-loss difference
        ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` at the target class.

    Args:
        class_weight, bbox_weight, giou_weight: the cost weights (DETR 1/5/2, Conditional DETR 2/5/2).
        no_object: softmax class scores with a no-object column (DETR) or sigmoid ones (focal cost).
        focal_alpha, focal_gamma: the focal cost's parameters.
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        no_object: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if class_weight == 0 and bbox_weight == 0 and giou_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero.")
        self.class_weight, self.bbox_weight, self.giou_weight = class_weight, bbox_weight, giou_weight
        self.no_object, self.focal_alpha, self.focal_gamma = no_object, focal_alpha, focal_gamma

    @classmethod
    def for_family(cls, family: ModelFamily) -> HungarianMatcher:
        """The published matcher of a model family (`core.family`): DETR 1/5/2 softmax, Conditional DETR 2/5/2 focal."""
        return cls(family.class_weight, family.bbox_weight, family.giou_weight, family.no_object,
                   family.focal_alpha, family.focal_gamma)

    def _class_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1) if self.no_object else logits.sigmoid()

    def pair_cost(self, prob: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor, dim: int = -1
                  ) -> torch.Tensor:
        """Matching cost of prediction/target pairs, elementwise (broadcast).

        Args:
            prob: ``[...]`` the prediction's probability of the target's class.
            boxes, target_boxes: normalized cxcywh with the 4 coordinates along ``dim`` (``[..., 4]``,
                or ``[4, ...]`` planes with ``dim=0``, which are several times faster on CPU).
        """
        if self.no_object:
            class_cost = -prob
        else:
            alpha, gamma = self.focal_alpha, self.focal_gamma
            negative = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
            positive = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
            class_cost = positive - negative
        bbox_cost = sum((boxes - target_boxes).abs().unbind(dim))  # unbind: fast on planes too
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(boxes, dim), box_cxcywh_to_xyxy(target_boxes, dim), dim)
        cost = self.bbox_weight * bbox_cost + self.class_weight * class_cost - self.giou_weight * giou
        # NaN/inf (a diverging model) must not crash scipy: such pairs become the least attractive.
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    def cost_block(self, probs: torch.Tensor, boxes: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """Matching cost of one image: probs ``[..., Q, C]``, boxes ``[..., Q, 4]`` -> ``[..., Q, T]``."""
        target_boxes = target["boxes"].to(boxes.dtype)
        return self.pair_cost(probs[..., target["class_labels"]], boxes[..., None, :], target_boxes)

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
            length ``min(Q, T_b)``, sorted by query; images with no targets get two empty tensors.
        """
        num_layers, batch, num_queries = logits.shape[:3]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} images.")
        sizes = [int(t["class_labels"].shape[0]) for t in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [[(empty, empty)] * batch for _ in range(num_layers)]
        device = logits.device
        # Only the block-diagonal pairs, each target with the Q queries of its own image: [L, S, Q]
        # for S targets in all, in a fixed number of kernels whatever B; box coordinates in planes.
        labels = torch.cat([t["class_labels"] for t in targets]).to(device)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.float32)
        image = torch.from_numpy(np.repeat(np.arange(batch), sizes)).to(device)  # [S]
        if self.no_object:  # the softmax needs whole rows; the sigmoid only the target's logit
            prob = logits.float().softmax(-1)[:, image, :, labels]  # [S, L, Q]
        else:
            prob = logits[:, image, :, labels].float().sigmoid()
        planes = boxes.float().permute(3, 0, 1, 2)[:, :, image]  # [4, L, S, Q]
        cost = self.pair_cost(prob.transpose(0, 1), planes, target_boxes.T[:, None, :, None], dim=0)  # [L, S, Q]
        host = cost.cpu().numpy()  # the one transfer

        per_layer: list[Matches] = [[] for _ in range(num_layers)]
        offset = 0
        for size in sizes:
            if size == 0:
                for layer in range(num_layers):
                    per_layer[layer].append((empty, empty))
                continue
            block = host[:, offset : offset + size]
            offset += size
            for layer in range(num_layers):
                # [T, Q]: scipy solves wide matrices without transposing; rows are targets here.
                cols, rows = linear_sum_assignment(block[layer])
                order = np.argsort(rows)
                per_layer[layer].append((torch.from_numpy(rows[order]), torch.from_numpy(cols[order])))
        return per_layer

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

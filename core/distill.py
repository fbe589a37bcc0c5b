"""Query-index distillation from the frozen base model, so more of a model can train on a few
reviewed images without forgetting the classes it had.

Fine-tuning starts from the base model, so query i of the student still means what query i of the
teacher meant. For every query the teacher is confident about (its best old-class probability at
least ``min_score``), the student's last decoder layer is pulled toward the teacher's old-class
probabilities (binary cross-entropy per class for sigmoid models; for softmax models the
cross-entropy over the old classes and "no object", renormalized) and toward its box (L1 on
normalized cxcywh). A query whose teacher box lies on a reviewed box of a *new* class (IoU > 0.5)
is left out: there the teacher is wrong by construction (it calls a star a triangle).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from core.boxes import box_cxcywh_to_xyxy, box_iou
from core.family import family_of


def on_new_class(boxes: torch.Tensor, target: dict, num_old: int, iou: float = 0.5) -> torch.Tensor:
    """``[Q]`` bool: which of the teacher's ``boxes [Q, 4]`` (normalized cxcywh) lie on a reviewed box
    of a class the teacher does not have (label id >= ``num_old``), IoU above ``iou``."""
    new = target["class_labels"] >= num_old
    if not new.any():
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    overlap, _ = box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target["boxes"][new].float()))
    return (overlap > iou).any(-1)


class QueryDistillation(nn.Module):
    """``loss_distill`` from a frozen copy of ``base`` (a transformers DETR / Conditional DETR with
    ``num_old`` classes). The copy is taken here, in eval mode, without gradients: training the
    student never changes it."""

    def __init__(self, base: nn.Module, num_old: int, weight: float = 1.0, box_weight: float = 5.0,
                 min_score: float = 0.3):
        super().__init__()
        self.teacher = copy.deepcopy(base).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.config.auxiliary_loss = False
        self.no_object = family_of(base).no_object
        self.num_old, self.weight, self.box_weight, self.min_score = num_old, weight, box_weight, min_score

    def train(self, mode: bool = True):  # the teacher stays in eval mode whatever the loop does
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def targets(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets: list[dict]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's ``(probabilities [B, Q, K], boxes [B, Q, 4], kept [B, Q])``; K = old classes
        (+ no-object for softmax models)."""
        outputs = self.teacher(pixel_values=pixel_values, pixel_mask=pixel_mask)
        logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()
        if self.no_object:
            probs = logits.softmax(-1)
            score = probs[..., :-1].max(-1).values
        else:
            probs = logits.sigmoid()
            score = probs.max(-1).values
        kept = score >= self.min_score
        for b, target in enumerate(targets):
            kept[b] &= ~on_new_class(boxes[b], target, self.num_old)
        return probs, boxes, kept

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, logits: torch.Tensor,
                boxes: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """``logits [B, Q, C]``, ``boxes [B, Q, 4]``: the student's last layer (C >= the old classes)."""
        probs, teacher_boxes, kept = self.targets(pixel_values, pixel_mask, targets)
        count = kept.sum().clamp(min=1)
        logits, boxes = logits.float(), boxes.float()
        if self.no_object:  # the old classes and no-object (the student's last column), renormalized
            student = torch.cat([logits[..., :self.num_old], logits[..., -1:]], -1).log_softmax(-1)
            class_loss = -(probs * student).sum(-1)
        else:
            class_loss = F.binary_cross_entropy_with_logits(logits[..., :self.num_old], probs,
                                                            reduction="none").sum(-1)
        box_loss = (boxes - teacher_boxes).abs().sum(-1)
        total = ((class_loss + self.box_weight * box_loss) * kept).sum() / count
        return {"loss_distill": self.weight * total}

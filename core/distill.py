"""Query-index distillation from the frozen base model, so more of a model can train on a few
reviewed images without forgetting the classes it had.

Fine-tuning starts from the base model, so query i of the student still means what query i of the
teacher meant. For every query the teacher is confident about (its best old-class probability at
least ``min_score``), the student's last decoder layer is pulled toward the teacher's old-class
probabilities (binary cross-entropy per class for sigmoid models; for softmax models the
cross-entropy over the old classes and "no object", renormalized) and toward its box (L1 on
normalized cxcywh). A query whose teacher box lies on a reviewed box of a *new* class (IoU > 0.5)
is left out: there the teacher is wrong by construction (it calls a star a triangle).

When everything before the student's last decoder layer stays frozen (``trainable`` "heads" or
"last_layer", `core.train.FROZEN_TRUNK`), the teacher's backbone, encoder and first decoder layers would compute
exactly what the student's just did. Given the student, the teacher then reuses it: a hook keeps
what the student's last decoder layer was called with, and the teacher runs only its own last
layer, closing norm and heads on that (a fraction of a forward pass instead of a whole one). It
also scores the queries along the training path the student's predictions take
(`core.forward.AllDecoderLayers`), so before any step the two agree exactly. When the whole
decoder trains (``trainable`` "decoder", `SHARES_ENCODER`), backbone and encoder are still the base
model's: a hook keeps the student's encoder output and the teacher runs only its own decoder (its
own object queries) and heads on it, as the whole teacher would at inference.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from core.boxes import box_cxcywh_to_xyxy, box_iou
from core.family import family_of
from core.forward import AllDecoderLayers, Encoded, inverse_sigmoid

# The ``trainable`` choice whose student shares backbone and encoder (not the decoder) with the teacher.
SHARES_ENCODER = ("decoder",)


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
                 min_score: float = 0.3, student: nn.Module | None = None, share_encoder: bool = False):
        """``student``: share its frozen trunk (only with ``trainable`` in `core.train.FROZEN_TRUNK`; the caller
        knows what trains), or with ``share_encoder`` only its backbone and encoder (``trainable`` in
        `SHARES_ENCODER`). Without it the teacher runs whole on the same pixels."""
        super().__init__()
        self.teacher = copy.deepcopy(base).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher.config.auxiliary_loss = False
        family = family_of(base)
        self.no_object, self.conditional = family.no_object, family.conditional_queries
        self.num_old, self.weight, self.box_weight, self.min_score = num_old, weight, box_weight, min_score
        self._last_layer_call: tuple | None = None  # (args, kwargs) of the student's last decoder layer
        self._encoded: Encoded | None = None  # the student's encoder output, when sharing the encoder
        self._hook, self._shares_encoder = None, student is not None and share_encoder
        if self._shares_encoder:
            self._hook = student.model.encoder.register_forward_hook(self._keep_encoded, with_kwargs=True)
        elif student is not None:
            self._hook = student.model.decoder.layers[-1].register_forward_hook(self._keep_call, with_kwargs=True)

    def _keep_call(self, module, args, kwargs, output) -> None:
        self._last_layer_call = (args, kwargs)

    def _keep_encoded(self, module, args, kwargs, output) -> None:
        memory = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        # A decoder pass (`AllDecoderLayers.decode`) reads memory, mask and spatial position only; the
        # feature size, stride and image sizes (for hybrid branches) are not known here and not needed.
        self._encoded = Encoded(memory, kwargs.get("attention_mask"), kwargs.get("spatial_position_embeddings"),
                                feature_size=(0, 0), stride=0, image_sizes=None)

    def release(self) -> None:
        """Stop watching the student (the hook would otherwise outlive training)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook, self._last_layer_call, self._encoded = None, None, None

    def _teacher_outputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's last-layer ``(logits, boxes)``: from the student's trunk when shared."""
        if self._hook is None:
            outputs = self.teacher(pixel_values=pixel_values, pixel_mask=pixel_mask)
            return outputs.logits, outputs.pred_boxes
        if self._shares_encoder:
            if self._encoded is None:
                raise RuntimeError("the teacher sharing the encoder needs the student's forward pass of this batch first.")
            encoded, self._encoded = self._encoded, None  # one batch's memory serves that batch only
            position = self.teacher.model.query_position_embeddings.weight.unsqueeze(0).expand(
                encoded.memory.shape[0], -1, -1)
            logits, boxes = AllDecoderLayers(self.teacher).decode(encoded, torch.zeros_like(position), position)
            return logits[-1], boxes[-1]
        if self._last_layer_call is None:
            raise RuntimeError("the shared-trunk teacher needs the student's forward pass of this batch first.")
        args, kwargs = self._last_layer_call
        self._last_layer_call = None  # one batch's inputs serve that batch only
        model, decoder = self.teacher.model, self.teacher.model.decoder
        hidden = decoder.layers[-1](*args, **kwargs)
        hidden = decoder.layernorm(hidden[0] if isinstance(hidden, tuple) else hidden)
        logits, raw = self.teacher.class_labels_classifier(hidden), self.teacher.bbox_predictor(hidden)
        if self.conditional:  # box centres relative to the reference points, which the frozen trunk fixes
            reference = decoder.ref_point_head(model.query_position_embeddings.weight).sigmoid()
            raw = torch.cat([raw[..., :2] + inverse_sigmoid(reference), raw[..., 2:]], dim=-1)
        return logits, raw.sigmoid()

    def train(self, mode: bool = True):  # the teacher stays in eval mode whatever the loop does
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def targets(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, targets: list[dict]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's ``(probabilities [B, Q, K], boxes [B, Q, 4], kept [B, Q])``; K = old classes
        (+ no-object for softmax models)."""
        logits, boxes = self._teacher_outputs(pixel_values, pixel_mask)
        logits, boxes = logits.float(), boxes.float()
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

"""Set-prediction losses of DETR (cross-entropy) and Conditional DETR (sigmoid focal), with
auxiliary losses on every decoder layer and an optional one-to-many branch (H-DETR's hybrid
layer scheme) that speeds up convergence.

Targets follow the transformers contract: per image ``{"class_labels": LongTensor[T],
"boxes": FloatTensor[T, 4]}`` with boxes normalized cxcywh. `validate_targets` rejects broken
targets with a message before they reach the loss. A target may also carry ``"known_classes":
BoolTensor[C]``, the classes it is labelled for (a pseudo-labelled replay image knows only the base
model's classes): the class loss of that image ignores the other classes, so an unlabelled object of
a new class there is not taught as background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.boxes import box_cxcywh_to_xyxy, paired_generalized_box_iou
from core.family import DETR, ModelFamily
from core.matcher import HungarianMatcher, Matches


class TargetError(ValueError):
    """A training target is unusable (degenerate or non-finite box, bad label). Says which and why."""


def validate_targets(targets: list[dict[str, torch.Tensor]], num_classes: int, where: str = "batch") -> None:
    """Raise `TargetError` for boxes with NaN/inf, zero or negative size, centres outside [0, 1],
    or labels outside ``0..num_classes-1``. ``where`` names the data in the message."""
    for index, target in enumerate(targets):
        if "class_labels" not in target or "boxes" not in target:
            raise TargetError(f"{where}, image {index}: a target needs 'class_labels' and 'boxes'.")
        boxes, labels = target["boxes"], target["class_labels"]
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or labels.shape[0] != boxes.shape[0]:
            raise TargetError(
                f"{where}, image {index}: boxes must be [N, 4] with one label each, got {tuple(boxes.shape)} "
                f"boxes and {tuple(labels.shape)} labels."
            )
        non_finite = ~torch.isfinite(boxes).all(1)
        empty = (boxes[:, 2:] <= 0).any(1)
        outside = ((boxes[:, :2] < 0) | (boxes[:, :2] > 1)).any(1)
        problems = []
        if non_finite.any():
            problems.append("NaN or infinite coordinates")
        elif empty.any():
            problems.append("zero or negative width/height")
        elif outside.any():
            problems.append("a centre outside the image (boxes must be normalized cxcywh)")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            problems.append(f"class ids outside 0..{num_classes - 1}")
        known = target.get("known_classes")
        if known is not None:
            if known.dtype != torch.bool or tuple(known.shape) != (num_classes,):
                problems.append(f"'known_classes' must be a bool tensor of {num_classes}, got {known.dtype} "
                                f"{tuple(known.shape)}")
            elif labels.numel() and not problems and not known[labels].all():
                problems.append("a box of a class the image is not labelled for ('known_classes')")
        if problems:
            bad = non_finite | empty | outside
            first = int(bad.nonzero()[0]) if bad.any() else 0
            raise TargetError(
                f"{where}, image {index}: {', '.join(problems)} (box {first}: {boxes[first].tolist()}). "
                "Fix or drop that annotation; boxes are normalized [cx, cy, w, h] with w, h > 0."
            )


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise focal loss (RetinaNet) for ``logits`` and 0/1 ``targets`` of the same shape."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def _per_process(count: float, device: torch.device) -> float:
    """A count (e.g. of target boxes) averaged over processes under DDP, at least 1, so every
    rank normalizes its losses alike."""
    total = torch.tensor([float(count)], device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        world = torch.distributed.get_world_size()
    return max(total.item() / world, 1.0)


def _num_boxes(targets: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    return _per_process(sum(len(t["class_labels"]) for t in targets), device)


def repeat_targets(targets: list[dict[str, torch.Tensor]], times: int) -> list[dict[str, torch.Tensor]]:
    return [{**t, "class_labels": t["class_labels"].repeat(times), "boxes": t["boxes"].repeat(times, 1)}
            for t in targets]


def known_classes(targets: list[dict[str, torch.Tensor]], num_classes: int, device: torch.device
                  ) -> torch.Tensor | None:
    """``[B, C]`` bool: the classes each image is labelled for; None when every image knows them all."""
    if all(t.get("known_classes") is None for t in targets):
        return None
    every = torch.ones(num_classes, dtype=torch.bool, device=device)
    return torch.stack([every if t.get("known_classes") is None else t["known_classes"].to(device) for t in targets])


class SetCriterion(nn.Module):
    """The DETR / Conditional DETR training loss.

    For each decoder layer, predictions are matched to targets by `HungarianMatcher` (all layers in
    one call) and the layer pays: a class loss over all queries, and L1 + GIoU on matched boxes,
    each normalized by the number of target boxes.

    Args:
        num_classes: number of real classes C.
        matcher: the matcher; DETR's by default.
        no_object: cross-entropy over C + 1 with the no-object class weighted ``eos_coef`` (DETR),
            or the sigmoid focal loss over C with no no-object column (Conditional DETR).
        class_weight, bbox_weight, giou_weight: loss weights (DETR 1/5/2; the Conditional DETR paper
            uses 2/5/2, transformers' built-in loss 1/5/2).
        one_to_many: H-DETR's hybrid layer scheme: if > 1, the first ``one_to_many_layers``
            decoder layers are matched against every target repeated this many times (more
            positives per step, faster convergence); the last layers stay one-to-one, so inference
            needs no NMS. 0 disables it.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher | None = None,
        no_object: bool = True,
        eos_coef: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        one_to_many: int = 0,
        one_to_many_layers: int = 0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher.for_family(DETR)
        self.no_object, self.eos_coef = no_object, eos_coef
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.weights = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        self.one_to_many, self.one_to_many_layers = one_to_many, one_to_many_layers
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def _class_loss(self, logits: torch.Tensor, targets: list[dict], matches: Matches, num_boxes: float) -> torch.Tensor:
        batch, queries = logits.shape[:2]
        target_classes = torch.full((batch, queries), self.num_classes, dtype=torch.int64, device=logits.device)
        for b, (rows, cols) in enumerate(matches):
            target_classes[b, rows.to(logits.device)] = targets[b]["class_labels"][cols.to(logits.device)]
        known = known_classes(targets, self.num_classes, logits.device)
        if self.no_object:
            if known is not None:  # unknown classes leave the softmax of that image (no-object stays)
                keep = torch.cat([known, known.new_ones(batch, 1)], 1)[:, None, :]
                logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
            return F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(logits.dtype))
        onehot = F.one_hot(target_classes, self.num_classes + 1)[..., :-1].to(logits.dtype)
        loss = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        if known is not None:
            loss = loss * known[:, None, :].to(loss.dtype)
        return loss.sum() / num_boxes

    def _box_losses(self, boxes: torch.Tensor, targets: list[dict], matches: Matches,
                    num_boxes: float) -> tuple[torch.Tensor, torch.Tensor]:
        source = torch.cat([boxes[b, rows.to(boxes.device)] for b, (rows, _) in enumerate(matches)])
        target = torch.cat([t["boxes"][cols.to(boxes.device)] for t, (_, cols) in zip(targets, matches)]).to(source)
        if source.numel() == 0:
            zero = boxes.sum() * 0  # keeps the graph (and DDP's gradient hooks) intact
            return zero, zero
        l1 = F.l1_loss(source, target, reduction="sum") / num_boxes
        giou = paired_generalized_box_iou(box_cxcywh_to_xyxy(source), box_cxcywh_to_xyxy(target))
        return l1, (1 - giou).sum() / num_boxes

    def _layers(self, logits: torch.Tensor, boxes: torch.Tensor, layer_targets: list[list[dict]],
                matches: list[Matches], num_boxes: list[float], prefix: str) -> dict[str, torch.Tensor]:
        """Class, L1 and GIoU of each layer given its targets and matches; keys ``{prefix}_ce``
        etc. for the last layer, ``..._{i}`` for layer i, and ``prefix`` itself for the weighted sum."""
        num_layers = logits.shape[0]
        losses: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        for layer in range(num_layers):
            ce = self._class_loss(logits[layer], layer_targets[layer], matches[layer], num_boxes[layer])
            l1, giou = self._box_losses(boxes[layer], layer_targets[layer], matches[layer], num_boxes[layer])
            suffix = "" if layer == num_layers - 1 else f"_{layer}"
            for name, value in (("ce", ce), ("bbox", l1), ("giou", giou)):
                losses[f"{prefix}_{name}{suffix}"] = value
                total = total + self.weights[f"loss_{name}"] * value
        losses[prefix] = total
        return losses

    def forward(self, logits: torch.Tensor, boxes: torch.Tensor,
                targets: list[dict[str, torch.Tensor]], prefix: str = "loss") -> dict[str, torch.Tensor]:
        """Losses for all decoder layers.

        Args:
            logits: ``[L, B, Q, C(+1)]`` class logits of every decoder layer, the last one final
                (``[B, Q, C(+1)]`` for the final layer alone).
            boxes: ``[L, B, Q, 4]`` (or ``[B, Q, 4]``) sigmoid cxcywh boxes.
            targets: B target dicts.
            prefix: the names of the returned losses (another prefix for another query set).

        Returns:
            ``loss`` (the weighted total to backpropagate); ``loss_ce``, ``loss_bbox``,
            ``loss_giou`` of the final layer; and the same with suffix ``_{i}`` for layer i < L-1.
        """
        if logits.ndim == 3:
            logits, boxes = logits[None], boxes[None]
        num_layers = logits.shape[0]
        num_boxes = _num_boxes(targets, logits.device)
        many = min(self.one_to_many_layers, num_layers - 1) if self.one_to_many > 1 else 0
        matches = self.matcher.match_layers(logits[many:], boxes[many:], targets)
        layer_targets, layer_boxes = [targets] * num_layers, [num_boxes] * num_layers
        if many:
            repeated = repeat_targets(targets, self.one_to_many)
            matches = self.matcher.match_layers(logits[:many], boxes[:many], repeated) + matches
            layer_targets[:many] = [repeated] * many
            layer_boxes[:many] = [num_boxes * self.one_to_many] * many
        return self._layers(logits, boxes, layer_targets, matches, layer_boxes, prefix)

    def fixed_assignment(self, logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                         matches: Matches, prefix: str) -> dict[str, torch.Tensor]:
        """The same losses with the matching given instead of computed (Co-DETR's positive
        queries: query i belongs to its anchor's box): ``matches[b] = (query rows, target cols)``
        for every layer; unmatched queries learn no-object. Normalized by the matched count."""
        num_layers = logits.shape[0]
        num_matched = _per_process(sum(len(rows) for rows, _ in matches), logits.device)
        return self._layers(logits, boxes, [targets] * num_layers, [matches] * num_layers,
                            [num_matched] * num_layers, prefix)


def criterion_for(family: ModelFamily, num_classes: int, **overrides) -> SetCriterion:
    """The published loss of a model family (`core.family`): DETR (CE, eos 0.1, 1/5/2) or
    Conditional DETR (focal, 2/5/2); ``overrides`` set any other `SetCriterion` argument."""
    settings = dict(no_object=family.no_object, eos_coef=family.eos_coef, focal_alpha=family.focal_alpha,
                    focal_gamma=family.focal_gamma, class_weight=family.class_weight, bbox_weight=family.bbox_weight,
                    giou_weight=family.giou_weight)
    return SetCriterion(num_classes, HungarianMatcher.for_family(family), **{**settings, **overrides})


def stack_decoder_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [L, B, Q, C], boxes [L, B, Q, 4])`` from a transformers DETR output.

    With ``config.auxiliary_loss=True`` the model returns the intermediate layers' predictions in
    ``auxiliary_outputs``; the final layer is appended last.
    """
    aux = outputs.auxiliary_outputs or []
    logits = torch.stack([a["logits"] for a in aux] + [outputs.logits])
    boxes = torch.stack([a["pred_boxes"] for a in aux] + [outputs.pred_boxes])
    return logits, boxes

"""Hybrid-assignment training: one-to-many supervision beside DETR's one-to-one Hungarian loss,
at no inference cost.

- ``co-detr`` (Zong, Song, Liu, ICCV 2023), `CoDetrBranch`: a feature pyramid on the encoder
  memory (`core.pyramid`) feeds an auxiliary ATSS head (`core.atss`, one-to-many by anchors), and
  every positive anchor becomes a *customized positive query* decoded in a separate pass with the
  decoder's own weights; query i is fixed to its anchor's box (no Hungarian matching), and pays
  the main branch's class, L1 and GIoU losses on every decoder layer. Loss: main + lambda1 x
  positive queries + lambda2 x L x ATSS head (L decoder layers). lambda1 = 0 leaves out the
  positive queries, lambda2 = 0 the ATSS head (the ablation arms).
- ``h-detr`` (Jia et al., CVPR 2023, hybrid branch), `HDetrBranch`: a second group of learned
  queries decoded in a separate pass and matched by the Hungarian matcher against every target
  repeated k times.

Both modules live outside the detector: the detector's state dict, outputs and speed are those
of a model trained without them. The training loop keeps them in its checkpoints (to resume) and
drops them when it is done.

Simplifications: one auxiliary head (K = 1; Co-DETR's Faster R-CNN head, K = 2, is not built);
the decoder is DETR's / Conditional DETR's, not Deformable DETR's, so a positive query carries its
anchor as a position embedding (and, for Conditional DETR, as its reference point) rather than as
a reference box refined layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from core.atss import ATSSHead, atss_assign, atss_loss, make_anchors
from core.boxes import box_cxcywhn_to_xyxy, box_xyxy_centers, box_xyxy_to_cxcywhn
from core.family import family_of
from core.forward import Encoded, backbone_stride
from core.losses import SetCriterion, repeat_targets
from core.pyramid import SimplePyramid
from core.train import FROZEN_TRUNK

HYBRID = ("off", "co-detr", "h-detr")
ATSS_WEIGHTS = {"loss_atss_cls": 1.0, "loss_atss_giou": 2.0, "loss_atss_centerness": 1.0}  # Co-DETR's ATSS config

Decode = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # AllDecoderLayers.decode


@dataclass
class HybridConfig:
    """Which one-to-many branch trains beside the model (`build_branch`), and its settings."""

    method: str = field(default="off", metadata={"flag": "hybrid"})  # "off", "co-detr" or "h-detr"
    anchor_scale: float = 8.0  # co-detr: anchor side in strides (ATSS: 8); 4 suits small objects such as the shapes
    co_detr_lambda1: float = 1.0  # positive queries' loss weight; 0 leaves them out
    co_detr_lambda2: float = 2.0  # ATSS head's loss weight (times the decoder layers); 0 leaves the head out
    co_detr_strides: Sequence[int] = (8, 16, 32, 64, 128)  # pyramid levels, input pixels per cell
    co_detr_max_queries: int = 300  # positive queries per image at most (at least 9)
    co_detr_anchor_reference: bool = True  # Conditional DETR: anchor centre as the query's reference point
    h_detr_queries: int = 5  # the one-to-many group, as a multiple of the model's queries
    h_detr_repeats: int = 6  # each target repeated this often for the group's matching
    h_detr_weight: float = 1.0


def hybrid_setting_problem(hybrid: str, trainable: str, one_to_many: int = 0, lambda2: float = 0.0) -> str | None:
    """What is wrong with training ``hybrid`` while only ``trainable`` trains (`core.train.TRAINABLE`),
    as a message for the user; None when the pair can work. One rule for the loop, the fine-tune
    and the Train tab, each of which checks it before it starts."""
    if hybrid not in HYBRID:
        return f"hybrid must be one of {', '.join(HYBRID)}; got {hybrid!r}."
    if hybrid != "off" and trainable in FROZEN_TRUNK:
        return (f"hybrid={hybrid!r} supervises every decoder layer (Co-DETR's ATSS head also the encoder), which "
                f"trainable={trainable!r} keeps (nearly all) frozen, so it has little to train; choose 'decoder', "
                "'transformer' or 'all' for what trains (or hybrid 'off').")
    if hybrid == "co-detr" and trainable == "decoder" and lambda2 > 0:
        return ("hybrid='co-detr' with trainable='decoder': its ATSS head supervises the encoder, which stays "
                "frozen, so the head would train only itself; set co_detr_lambda2 to 0 (positive queries only) "
                "or train 'transformer' or 'all'.")
    if hybrid != "off" and one_to_many > 1:
        return "one_to_many (hybrid layers) and hybrid are two forms of one-to-many training; use one."
    return None


def build_branch(model: nn.Module, num_classes: int, config: HybridConfig, trainable: str = "all",
                 one_to_many: int = 0, seed: int = 0) -> nn.Module | None:
    """The training-only branch ``config.method`` asks for (None for "off"), on the model's device,
    for `core.train.train`'s ``branch``. Its initial weights depend only on ``seed``; the global
    torch random stream is left as it was."""
    if problem := hybrid_setting_problem(config.method, trainable, one_to_many, config.co_detr_lambda2):
        raise ValueError(problem)
    if config.method == "off":
        return None
    d_model, layers = model.config.d_model, model.config.decoder_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.method == "co-detr":
            branch = CoDetrBranch(d_model, num_classes, layers, backbone_stride(model.config), config.co_detr_strides,
                                  config.anchor_scale, lambda1=config.co_detr_lambda1, lambda2=config.co_detr_lambda2,
                                  max_queries=config.co_detr_max_queries,
                                  anchor_reference=config.co_detr_anchor_reference
                                  and family_of(model).conditional_queries)
        else:
            branch = HDetrBranch(d_model, config.h_detr_queries * model.config.num_queries, config.h_detr_repeats,
                                 config.h_detr_weight)
    return branch.to(next(model.parameters()).device)


def sine_box_embedding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Deformable DETR's proposal embedding: ``[..., 4]`` normalized boxes -> ``[..., 4 * num_feats]``,
    each coordinate times 2 pi over ``num_feats`` frequencies, sines and cosines interleaved."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = boxes.float()[..., None] * (2 * math.pi) / dim_t  # [..., 4, F]
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-3)


class PositiveQueries(nn.Module):
    """Co-DETR's customized positive queries: content and position embeddings from anchors.

    sine(anchor cx, cy, w, h) -> Linear -> LayerNorm -> split into position and content halves;
    content += LayerNorm(Linear(the pyramid feature at the anchor)); position += a learned
    embedding of the auxiliary head the anchors came from. (The reference code builds that
    embedding as ``nn.Embedding(K, 1, 1, d)``, i.e. one scalar per head with padding_idx 1 and
    max_norm d, a bug its authors keep to reproduce their ResNet-50 results; here it is
    ``nn.Embedding(K, d)``, a vector per head, as they say it should be.)
    """

    def __init__(self, d_model: int, num_heads: int = 1):
        super().__init__()
        self.d_model = d_model
        self.box_projection = nn.Linear(2 * d_model, 2 * d_model)
        self.box_norm = nn.LayerNorm(2 * d_model)
        self.feature_projection = nn.Linear(d_model, d_model)
        self.feature_norm = nn.LayerNorm(d_model)
        self.head_embedding = nn.Embedding(num_heads, d_model)

    def forward(self, anchors: torch.Tensor, features: torch.Tensor, head: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``anchors [B, N, 4]`` normalized cxcywh, ``features [B, N, d]`` -> ``(content, position)``, each ``[B, N, d]``."""
        embedded = self.box_norm(self.box_projection(sine_box_embedding(anchors, self.d_model // 2).to(features.dtype)))
        position, content = embedded.split(self.d_model, dim=-1)
        content = content + self.feature_norm(self.feature_projection(features))
        return content, position + self.head_embedding.weight[head]


def _pick(indices: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` of ``indices`` at random (with replacement only if there are too few)."""
    if count <= 0 or indices.numel() == 0:
        return indices[:0]
    if indices.numel() >= count:
        return indices[torch.randperm(indices.numel(), device=indices.device)[:count]]
    return indices[torch.randint(indices.numel(), (count,), device=indices.device)]


class CoDetrBranch(nn.Module):
    """Co-DETR with one ATSS auxiliary head (see the module docstring).

    Args:
        d_model: the detector's hidden size; num_classes: its real classes; num_layers: decoder layers.
        base_stride: input pixels per encoder-memory cell (`core.forward.backbone_stride`).
        strides: pyramid levels; anchor_scale: anchor side in strides (ATSS: 8); topk: ATSS candidates per level.
        lambda1: weight of the positive queries' loss (0: no positive queries).
        lambda2: weight of the ATSS head's loss, which is also multiplied by ``num_layers`` (0: no head).
        max_queries / min_queries: positive queries per image at most (random subsample) / at
            least (padded with random negative anchors, which learn only "no object").
        anchor_reference: Conditional DETR: the anchor centre is the query's reference point
            (an adaptation); False leaves the decoder to derive it from the position embedding.
    """

    def __init__(self, d_model: int, num_classes: int, num_layers: int, base_stride: int,
                 strides: Sequence[int] = (8, 16, 32, 64, 128), anchor_scale: float = 8.0, topk: int = 9,
                 lambda1: float = 1.0, lambda2: float = 2.0, max_queries: int = 300, min_queries: int = 9,
                 anchor_reference: bool = False):
        super().__init__()
        if lambda1 <= 0 and lambda2 <= 0:
            raise ValueError("co-detr with lambda1 = lambda2 = 0 trains nothing extra; set hybrid='off' instead.")
        if not 0 < min_queries <= max_queries:
            raise ValueError(f"need 0 < min_queries <= max_queries, got {min_queries} and {max_queries}.")
        self.num_layers, self.strides = num_layers, list(strides)
        self.anchor_scale, self.topk = anchor_scale, topk
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.max_queries, self.min_queries, self.anchor_reference = max_queries, min_queries, anchor_reference
        self.pyramid = SimplePyramid(d_model, base_stride, strides)
        self.head = ATSSHead(d_model, num_classes, len(self.strides)) if lambda2 > 0 else None
        self.queries = PositiveQueries(d_model) if lambda1 > 0 else None

    def _queries(self, features: list[torch.Tensor], anchors: torch.Tensor, assigned: list[torch.Tensor],
                 valid: torch.Tensor, sizes: torch.Tensor):
        """Each image's query anchors, positives first, then random negatives as padding, as
        ``(anchors [B, N, 4]`` normalized cxcywh, ``features [B, N, d]`` at those anchors, and the
        fixed matches ``(query rows, box cols)`` per image)."""
        chosen, matches = [], []
        positives = [_pick((a >= 0).nonzero().squeeze(1), min(int((a >= 0).sum()), self.max_queries)) for a in assigned]
        count = min(max([len(p) for p in positives] + [self.min_queries]), self.max_queries)
        for b, positive in enumerate(positives):
            negative = ((assigned[b] < 0) & valid[b]).nonzero().squeeze(1)
            if negative.numel() == 0:
                negative = (assigned[b] < 0).nonzero().squeeze(1)
            chosen.append(torch.cat([positive, _pick(negative, count - len(positive))]))
            rows = torch.arange(len(positive), device=positive.device)
            matches.append((rows, assigned[b][positive]))
        index = torch.stack(chosen)  # [B, N]
        heights, widths = sizes.to(anchors).unbind(1)
        normalized = box_xyxy_to_cxcywhn(anchors[index], widths[:, None], heights[:, None]).clamp(0, 1)
        flat = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)  # [B, A, d], anchors' order
        gathered = flat.gather(1, index[..., None].expand(-1, -1, flat.shape[-1]))
        return normalized, gathered, matches

    def forward(self, encoded: Encoded, targets: list[dict[str, torch.Tensor]], decode: Decode) -> dict:
        if encoded.stride != self.pyramid.base_stride:
            raise ValueError(f"the branch was built for memory at stride {self.pyramid.base_stride}, this model's is "
                             f"{encoded.stride}; build it with core.hybrid.build_branch(model, ...).")
        features = self.pyramid(encoded.memory_map())
        device = encoded.memory.device
        anchors, levels = make_anchors([f.shape[-2:] for f in features], self.strides, self.anchor_scale, device)
        centres = box_xyxy_centers(anchors)
        sizes = encoded.image_sizes  # [B, 2] (h, w)
        valid = (centres[None, :, 0] < sizes[:, None, 1]) & (centres[None, :, 1] < sizes[:, None, 0])  # not in padding
        pixel_targets, assigned = [], []
        for b, target in enumerate(targets):
            height, width = sizes[b].to(target["boxes"])
            boxes = box_cxcywhn_to_xyxy(target["boxes"], width, height)
            image_assigned, _ = atss_assign(anchors, levels, boxes.float(), self.topk, valid=valid[b])
            pixel_targets.append({**target, "boxes_xyxy": boxes})  # class_labels (and known_classes) as given
            assigned.append(image_assigned)
        outputs = {"anchors": anchors, "valid": valid, "assigned": assigned, "pixel_targets": pixel_targets}
        if self.head is not None:
            outputs["head"] = self.head(features)
        if self.queries is not None:
            normalized, gathered, matches = self._queries(features, anchors, assigned, valid, sizes)
            content, position = self.queries(normalized, gathered)
            reference = normalized[..., :2] if self.anchor_reference else None
            logits, boxes = decode(encoded, content, position, reference)
            outputs["queries"] = (logits, boxes, matches)
        return outputs

    def loss(self, outputs: dict, targets: list[dict[str, torch.Tensor]], criterion: SetCriterion) -> dict[str, torch.Tensor]:
        """``loss_pq*`` (positive queries, every layer), ``loss_atss_*`` and their weighted sum
        ``loss_hybrid``, in float32."""
        losses: dict[str, torch.Tensor] = {}
        total = outputs["anchors"].new_zeros(())
        if "queries" in outputs:
            logits, boxes, matches = outputs["queries"]
            losses.update(criterion.fixed_assignment(logits.float(), boxes.float(), targets, matches, "loss_pq"))
            total = total + self.lambda1 * losses["loss_pq"]
        if "head" in outputs:
            head = atss_loss(*outputs["head"], outputs["anchors"], outputs["pixel_targets"], outputs["assigned"],
                             outputs["valid"])
            losses.update(head)
            total = total + self.lambda2 * self.num_layers * sum(ATSS_WEIGHTS[k] * v for k, v in head.items())
        losses["loss_hybrid"] = total
        return losses


class HDetrBranch(nn.Module):
    """H-DETR's hybrid branch: ``num_queries`` further learned queries, decoded in their own pass
    with the decoder's weights and matched one-to-many: against every target repeated
    ``repeats`` times. Loss: ``weight`` x the main branch's loss of that matching."""

    def __init__(self, d_model: int, num_queries: int, repeats: int = 6, weight: float = 1.0):
        super().__init__()
        if repeats < 1 or num_queries < 1:
            raise ValueError(f"h-detr needs num_queries >= 1 and repeats >= 1, got {num_queries} and {repeats}.")
        self.position = nn.Embedding(num_queries, d_model)
        self.repeats, self.weight = repeats, weight

    def forward(self, encoded: Encoded, targets: list[dict[str, torch.Tensor]], decode: Decode) -> dict:
        position = self.position.weight.unsqueeze(0).expand(encoded.memory.shape[0], -1, -1)
        logits, boxes = decode(encoded, torch.zeros_like(position), position)
        return {"logits": logits, "boxes": boxes}

    def loss(self, outputs: dict, targets: list[dict[str, torch.Tensor]], criterion: SetCriterion) -> dict[str, torch.Tensor]:
        losses = criterion(outputs["logits"].float(), outputs["boxes"].float(), repeat_targets(targets, self.repeats),
                           prefix="loss_o2m")
        losses["loss_hybrid"] = self.weight * losses.pop("loss_o2m")
        return losses

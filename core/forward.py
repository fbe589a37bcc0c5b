"""The training forward pass of a transformers DETR / Conditional DETR, split into its two halves:
`encode` (backbone, projection, encoder: once per batch) and `decode` (the decoder and the
model's own class and box heads: once per set of queries). The main queries are the model's;
hybrid training (`core.hybrid`) decodes further query sets over the same memory with the same
weights. `AllDecoderLayers` puts the two together and is what the training loop (and DDP) runs.

The halves call the model's own submodules in the order its ``forward`` does; a test checks that
the result equals ``model(pixel_values, pixel_mask)`` for both kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.family import family_of


@dataclass
class Encoded:
    """What every decoder pass over one batch shares.

    memory ``[B, HW, d]``: the encoder's output; mask ``[B, HW]`` (1 = real pixel, 0 = padding);
    spatial_position ``[B, HW, d]``: the sine position embedding of each memory cell;
    feature_size ``(h, w)`` of the memory map; stride: input pixels per memory cell;
    image_sizes ``[B, 2]``: each image's unpadded ``(height, width)`` in input pixels.
    """

    memory: torch.Tensor
    mask: torch.Tensor
    spatial_position: torch.Tensor
    feature_size: tuple[int, int]
    stride: int
    image_sizes: torch.Tensor

    def memory_map(self) -> torch.Tensor:
        """The memory as a feature map ``[B, d, h, w]``."""
        return self.memory.transpose(1, 2).unflatten(-1, self.feature_size)


def encode(model: nn.Module, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> Encoded:
    """Backbone, input projection and encoder of ``model`` (a ``DetrModel`` or ``ConditionalDetrModel``)."""
    feature_map, mask = model.backbone(pixel_values, pixel_mask)[-1]
    projected = model.input_projection(feature_map)
    spatial = model.position_embedding(shape=feature_map.shape, device=pixel_values.device, dtype=pixel_values.dtype,
                                       mask=mask).flatten(2).transpose(1, 2)
    flat_mask = mask.flatten(1)
    memory = model.encoder(inputs_embeds=projected.flatten(2).transpose(1, 2), attention_mask=flat_mask,
                           spatial_position_embeddings=spatial).last_hidden_state
    height, width = feature_map.shape[-2:]
    stride = backbone_stride(model.config)
    image_sizes = torch.stack([pixel_mask.any(2).sum(1), pixel_mask.any(1).sum(1)], 1)
    return Encoded(memory, flat_mask, spatial, (int(height), int(width)), stride, image_sizes)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class AllDecoderLayers(nn.Module):
    """Runs a transformers DETR / Conditional DETR and returns every decoder layer's predictions:
    ``logits [L, B, Q, C]`` and ``boxes [L, B, Q, 4]`` (the last layer is the model's output).

    With a ``hybrid`` branch (`core.hybrid`) and targets, it returns a third item: the branch's
    outputs, computed over the same encoder memory. A module (not a function) so that DDP sees
    the whole forward pass, the branch included.
    """

    def __init__(self, detector: nn.Module, hybrid: nn.Module | None = None):
        super().__init__()
        self.detector, self.hybrid = detector, hybrid
        self.family = family_of(detector)

    def decode(self, encoded: Encoded, content: torch.Tensor, position: torch.Tensor,
               reference: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder pass with the model's weights: ``content``, ``position`` ``[B, N, d]`` are
        the queries and their position embeddings. ``reference`` ``[B, N, 2]`` (Conditional DETR
        only): normalized reference points to use instead of those the decoder derives from
        ``position``. Returns ``(logits [L, B, N, C], boxes [L, B, N, 4])``."""
        model = self.detector.model
        decoder = model.decoder
        hook = None
        if reference is not None:
            if not self.family.conditional_queries:
                raise ValueError("reference points exist only in Conditional DETR.")
            # The decoder computes its reference points as sigmoid(ref_point_head(position)); this
            # pass replaces that head's output, so the queries are anchored where we say.
            fixed = inverse_sigmoid(reference)
            hook = decoder.ref_point_head.register_forward_hook(lambda module, inputs, output: fixed.to(output.dtype))
        try:
            outputs = decoder(inputs_embeds=content, attention_mask=None, spatial_position_embeddings=encoded.spatial_position,
                              object_queries_position_embeddings=position, encoder_hidden_states=encoded.memory,
                              encoder_attention_mask=encoded.mask)
        finally:
            if hook is not None:
                hook.remove()
        hidden = outputs.intermediate_hidden_states  # [L, B, N, d], needs config.auxiliary_loss
        if hidden is None:
            hidden = outputs.last_hidden_state[None]
        logits = self.detector.class_labels_classifier(hidden)
        raw = self.detector.bbox_predictor(hidden)
        if self.family.conditional_queries:
            # Conditional DETR predicts box centres relative to each query's reference point.
            offset = inverse_sigmoid(outputs.reference_points).transpose(0, 1)
            raw = torch.cat([raw[..., :2] + offset, raw[..., 2:]], dim=-1)
        return logits, raw.sigmoid()

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                targets: list[dict[str, torch.Tensor]] | None = None):
        model = self.detector.model
        encoded = encode(model, pixel_values, pixel_mask)
        position = model.query_position_embeddings.weight.unsqueeze(0).expand(pixel_values.shape[0], -1, -1)
        logits, boxes = self.decode(encoded, torch.zeros_like(position), position)
        if self.hybrid is None or targets is None:
            return logits, boxes
        return logits, boxes, self.hybrid(encoded, targets, self.decode)



def backbone_stride(config) -> int:
    """Input pixels per backbone (and encoder-memory) cell of a transformers DETR-family config.

    A ResNet halves its input in the stem conv and the max-pool (stride 4), then once per stage
    after the first (and in the first too with ``downsample_in_first_stage``): 32 for a
    ResNet-50's C5, 16 for the bundled model's three stages. Each halving rounds up, so an input
    of ``H`` pixels gives ``ceil(H / stride)`` cells.
    """
    backbone = config.backbone_config
    stages = int(str(backbone.out_features[-1]).removeprefix("stage"))
    return 4 * 2 ** (stages - 1 + int(bool(getattr(backbone, "downsample_in_first_stage", False))))


def feature_size(padded_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """The backbone's output ``(h, w)`` for a padded input of ``padded_hw`` pixels."""
    return -(-int(padded_hw[0]) // stride), -(-int(padded_hw[1]) // stride)

"""Co-DETR's multi-scale adapter: a feature pyramid from single-scale encoder memory.

DETR and Conditional DETR encode one feature map (stride 32 for a ResNet-50's C5; the bundled
model's is stride 16). Co-DETR's auxiliary heads want several scales, and builds them as ViTDet
does: finer levels by bilinear upsampling, then a 3x3 convolution and GroupNorm; the base level
as it is; coarser levels by 3x3 stride-2 convolutions with GroupNorm, each from the one before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    while channels % groups:
        groups //= 2  # small test models: the largest power of two that divides the width
    return nn.GroupNorm(groups, channels)


class SimplePyramid(nn.Module):
    """Levels at ``strides`` from a ``[B, d, H, W]`` map at ``base_stride``.

    Args:
        d_model: channels of the memory and of every level.
        base_stride: the memory's stride in input pixels.
        strides: the levels to build, each a power-of-two multiple or fraction of ``base_stride``.
    """

    def __init__(self, d_model: int, base_stride: int, strides: Sequence[int] = (8, 16, 32, 64, 128)):
        super().__init__()
        for stride in strides:
            ratio = max(stride, base_stride) / min(stride, base_stride)
            if ratio != 2 ** round(torch.log2(torch.tensor(ratio)).item()):
                raise ValueError(f"stride {stride} is not a power-of-two multiple or fraction of {base_stride}.")
        self.base_stride, self.strides = base_stride, list(strides)
        self.finer = nn.ModuleDict({
            str(s): nn.Sequential(nn.Conv2d(d_model, d_model, 3, padding=1), group_norm(d_model))
            for s in strides if s < base_stride})
        coarse = [s for s in strides if s > base_stride]
        steps = int(torch.log2(torch.tensor(max(coarse) / base_stride)).item()) if coarse else 0
        self.coarser = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d_model, d_model, 3, stride=2, padding=1), group_norm(d_model))
            for _ in range(steps))

    def forward(self, memory: torch.Tensor) -> list[torch.Tensor]:
        """``[B, d, H, W]`` -> one ``[B, d, h_l, w_l]`` map per stride, in the order of ``strides``."""
        levels: dict[int, torch.Tensor] = {self.base_stride: memory}
        for stride in self.strides:
            if stride < self.base_stride:
                up = F.interpolate(memory, scale_factor=self.base_stride / stride, mode="bilinear", align_corners=False)
                levels[stride] = self.finer[str(stride)](up)
        current, stride = memory, self.base_stride
        for block in self.coarser:
            current, stride = block(current), stride * 2
            levels[stride] = current
        return [levels[s] for s in self.strides]

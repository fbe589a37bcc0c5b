"""Preprocessing in torch, on the model's device: resize, normalize, pad with a pixel mask.

It follows `DetrImageProcessor` (resize so the shorter side is 800 unless the longer would pass
1333, bilinear with antialiasing like PIL, ImageNet normalization, zero padding bottom/right to the
largest image of the batch) so that detections agree with the transformers processor, but works on
tensors: on CUDA the whole thing runs on the GPU, on CPU it avoids PIL round trips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.loading import PreprocessConfig


@dataclass
class Batch:
    """Model inputs for a batch, and the sizes needed to map outputs back to each image.

    pixel_values: ``[B, 3, H, W]`` float, normalized, zero-padded to the largest resized image.
    pixel_mask: ``[B, H, W]`` long, 1 on real pixels, 0 on padding.
    original_sizes: ``(height, width)`` of each input image.
    resized_sizes: ``(height, width)`` of each image after resizing (before padding).
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    original_sizes: list[tuple[int, int]]
    resized_sizes: list[tuple[int, int]]


def resized_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """``(height, width)`` after resizing, with exactly the rounding of transformers' DETR processor.

    The shorter side becomes ``shortest_edge`` unless the longer side would then exceed
    ``longest_edge``, in which case the longer side becomes (about) ``longest_edge``.

    >>> resized_size(480, 640, 800, 1333)
    (800, 1066)
    >>> resized_size(1080, 1920, 800, 1333)
    (750, 1333)
    """
    size: float = shortest_edge
    raw_size = None
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > longest_edge:
        raw_size = longest_edge * short / long
        size = int(round(raw_size))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    scale = raw_size if raw_size is not None else size
    if width < height:
        return int(scale * height / width), int(size)
    return int(size), int(scale * width / height)


def _to_uint8_chw(image: Image.Image | np.ndarray, device: torch.device) -> torch.Tensor:
    array = np.array(image)  # a writable copy: torch refuses to wrap PIL's read-only buffer
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"preprocess expects RGB uint8 images (HxWx3), got shape {array.shape} dtype {array.dtype}; "
            "decode inputs with core.images.load_image first."
        )
    return torch.from_numpy(array).to(device, non_blocking=True).permute(2, 0, 1)


def _resize(chw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear antialiased resize to float ``[3, h, w]`` in [0, 255]."""
    if tuple(chw.shape[-2:]) == size:
        return chw.float()
    if chw.device.type == "cpu":
        # The uint8 kernel is the fast CPU path and rounds like PIL does.
        return F.interpolate(chw[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].float()
    return F.interpolate(chw[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def preprocess(
    images: list[Image.Image | np.ndarray],
    config: PreprocessConfig,
    device: torch.device | str = "cpu",
    shortest_edge: int | None = None,
    longest_edge: int | None = None,
) -> Batch:
    """Turn RGB images into a padded, normalized batch on ``device``.

    Args:
        images: RGB uint8 images (PIL or ``HxWx3`` arrays), any sizes.
        config: the model's normalization and default resize rule.
        shortest_edge / longest_edge: override the resize rule, e.g. 512 for a fast CPU demo
            (``longest_edge`` defaults to ``shortest_edge * 1333 / 800`` when only the first is given).

    Example:
        >>> from PIL import Image
        >>> batch = preprocess([Image.new("RGB", (640, 480)), Image.new("RGB", (300, 400))], PreprocessConfig())
        >>> tuple(batch.pixel_values.shape), batch.resized_sizes
        ((2, 3, 1066, 1066), [(800, 1066), (1066, 800)])
    """
    if not images:
        raise ValueError("preprocess got no images.")
    device = torch.device(device)
    short = shortest_edge or config.shortest_edge
    if longest_edge is None:
        longest_edge = config.longest_edge if shortest_edge is None else round(short * config.longest_edge / config.shortest_edge)
    if short < 32 or longest_edge < short:
        raise ValueError(f"invalid processing size: shortest edge {short}, longest edge {longest_edge}.")

    chw = [_to_uint8_chw(image, device) for image in images]
    original = [(int(t.shape[1]), int(t.shape[2])) for t in chw]
    resized = [resized_size(h, w, short, longest_edge) for h, w in original]
    height, width = max(h for h, _ in resized), max(w for _, w in resized)

    mean = torch.tensor(config.image_mean, device=device).view(3, 1, 1) * 255
    std = torch.tensor(config.image_std, device=device).view(3, 1, 1) * 255
    pixel_values = torch.zeros(len(chw), 3, height, width, device=device)
    pixel_mask = torch.zeros(len(chw), height, width, dtype=torch.long, device=device)
    for i, (image, (h, w)) in enumerate(zip(chw, resized)):
        pixel_values[i, :, :h, :w] = (_resize(image, (h, w)) - mean) / std
        pixel_mask[i, :h, :w] = 1
    return Batch(pixel_values, pixel_mask, original, resized)

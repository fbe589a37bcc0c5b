"""The synthetic shapes domain: seeded images of labelled circles, squares, triangles (and stars).

Spec (other code generates from the same spec, keep to it):

- classes ``circle``, ``square``, ``triangle``; ``star`` is off by default and used to show that
  fine-tuning learns a new class;
- image sides 128 to 512 px, aspect 3:4 to 4:3; background a random colour gradient plus noise;
- 1 to 6 objects, each 10% to 45% of the shorter side; a fill colour that differs from the local
  background; squares, triangles and stars may be rotated; two objects overlap by at most 30% of
  the smaller one's area;
- a later shape is drawn over earlier ones; boxes are the tight axis-aligned bounds of each
  shape's *visible* pixels.

``generate_sample(seed)`` is a pure function of its seed. `ShapesDataset` yields training
samples in the transformers target contract; `write_coco` writes a COCO directory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from core.boxes import box_mask_to_xyxy, box_xyxy_to_cxcywh, box_xyxy_to_xywh

BASE_CLASSES = ("circle", "square", "triangle")
STAR = "star"


@dataclass
class ShapesSpec:
    """Parameters of the domain; the defaults are the spec above."""

    with_star: bool = False  # add the fourth class
    min_side: int = 128
    max_side: int = 512
    min_aspect: float = 3 / 4
    max_aspect: float = 4 / 3
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.10  # object size as a fraction of the image's shorter side
    max_scale: float = 0.45
    max_overlap: float = 0.30  # of the smaller object's area
    min_colour_distance: float = 90.0  # RGB distance of a fill from the background under it
    noise_std: float = 6.0

    @property
    def labels(self) -> list[str]:
        return [*BASE_CLASSES, STAR] if self.with_star else list(BASE_CLASSES)


@dataclass
class ShapesSample:
    """One image and its objects. ``boxes`` are ``[N, 4]`` xyxy pixels (x2, y2 exclusive)."""

    image: np.ndarray  # [H, W, 3] uint8
    boxes: np.ndarray
    class_ids: np.ndarray
    labels: list[str] = field(default_factory=list)  # the label space, ids index into it
    seed: int = 0

    @property
    def class_names(self) -> list[str]:
        return [self.labels[i] for i in self.class_ids]


def _background(rng: np.random.Generator, height: int, width: int, noise_std: float) -> np.ndarray:
    start, end = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = (x * math.cos(angle) + y * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    image = start[None, None] * (1 - t[..., None]) + end[None, None] * t[..., None]
    image += rng.normal(0, noise_std, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape whose unrotated bounding extent is about ``size``."""
    if kind == "square":
        radius, points = size / 2 * math.sqrt(2), [math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + radius * math.cos(a + angle), cy + radius * math.sin(a + angle)) for a in points]
    if kind == "triangle":
        radius = size / math.sqrt(3)  # an equilateral triangle of side `size`
        return [(cx + radius * math.cos(angle - math.pi / 2 + k * 2 * math.pi / 3),
                 cy + radius * math.sin(angle - math.pi / 2 + k * 2 * math.pi / 3)) for k in range(3)]
    if kind == STAR:
        outer, inner = size / 2, size / 2 * 0.42
        return [(cx + (outer if k % 2 == 0 else inner) * math.cos(angle - math.pi / 2 + k * math.pi / 5),
                 cy + (outer if k % 2 == 0 else inner) * math.sin(angle - math.pi / 2 + k * math.pi / 5))
                for k in range(10)]
    raise ValueError(f"unknown shape {kind}")


def _mask(kind: str, height: int, width: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        r = size / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle), fill=255)
    return np.asarray(canvas) > 0


def generate_sample(seed: int, spec: ShapesSpec | None = None) -> ShapesSample:
    """The image and objects for ``seed``: the same seed always gives the same sample."""
    spec = spec or ShapesSpec()
    rng = np.random.default_rng(seed)
    labels = spec.labels
    short = int(rng.integers(spec.min_side, spec.max_side + 1))
    long = int(min(spec.max_side, round(short * rng.uniform(1.0, spec.max_aspect))))
    height, width = (short, long) if rng.random() < 0.5 else (long, short)
    image = _background(rng, height, width, spec.noise_std)
    wanted = int(rng.integers(spec.min_objects, spec.max_objects + 1))

    masks: list[np.ndarray] = []
    class_ids: list[int] = []
    for _ in range(wanted * 20):  # placement attempts; crowded images simply get fewer objects
        if len(masks) == wanted:
            break
        class_id = int(rng.integers(len(labels)))
        kind = labels[class_id]
        size = rng.uniform(spec.min_scale, spec.max_scale) * min(height, width)
        margin = size / 2
        cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
        angle = rng.uniform(0, 2 * math.pi) if kind != "circle" else 0.0
        mask = _mask(kind, height, width, cx, cy, size, angle)
        area = int(mask.sum())
        if area < 16:
            continue
        if any((mask & other).sum() > spec.max_overlap * min(area, int(other.sum())) for other in masks):
            continue
        under = image[mask].astype(np.float32).mean(0)
        for _ in range(50):
            colour = rng.uniform(0, 255, size=3)
            if np.linalg.norm(colour - under) >= spec.min_colour_distance:
                break
        image[mask] = colour.astype(np.uint8)
        masks.append(mask)
        class_ids.append(class_id)

    # Visible pixels: a shape minus everything drawn after it.
    boxes, kept = [], []
    covered = np.zeros((height, width), dtype=bool)
    for index in range(len(masks) - 1, -1, -1):
        box = box_mask_to_xyxy(masks[index] & ~covered)
        covered |= masks[index]
        if box is not None:
            boxes.append(box)
            kept.append(class_ids[index])
    order = slice(None, None, -1)  # back to drawing order
    return ShapesSample(
        image=image,
        boxes=np.array(boxes[order], dtype=np.float32).reshape(-1, 4),
        class_ids=np.array(kept[order], dtype=np.int64),
        labels=labels,
        seed=seed,
    )


def to_target(sample: ShapesSample) -> dict[str, torch.Tensor]:
    """The transformers training target: ``class_labels [N]`` and ``boxes [N, 4]`` normalized cxcywh."""
    height, width = sample.image.shape[:2]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = box_xyxy_to_cxcywh(torch.from_numpy(sample.boxes)) / scale
    return {"class_labels": torch.from_numpy(sample.class_ids), "boxes": boxes.reshape(-1, 4)}


class ShapesDataset(torch.utils.data.Dataset):
    """``count`` samples with seeds ``first_seed .. first_seed + count - 1``; items are
    ``(image [H, W, 3] uint8, target)`` with the target in the transformers contract."""

    def __init__(self, count: int, first_seed: int = 0, spec: ShapesSpec | None = None):
        if count < 1:
            raise ValueError("a shapes dataset needs at least one sample.")
        self.count, self.first_seed, self.spec = count, first_seed, spec or ShapesSpec()
        self.labels = self.spec.labels

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        sample = generate_sample(self.first_seed + index, self.spec)
        return sample.image, to_target(sample)


def write_coco(directory: str | Path, count: int, first_seed: int = 0, spec: ShapesSpec | None = None) -> Path:
    """Write ``count`` samples as a COCO directory: ``images/*.png`` and ``annotations.json``.

    Category ids start at 1 (what CVAT and Label Studio expect): id ``k + 1`` is ``labels[k]``.
    The JSON is written last, through a temporary file, so a directory with an
    ``annotations.json`` is always complete. Returns the path of ``annotations.json``.
    """
    spec = spec or ShapesSpec()
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        seed = first_seed + index
        sample = generate_sample(seed, spec)
        name = f"shapes_{seed:07d}.png"
        Image.fromarray(sample.image).save(directory / "images" / name)
        height, width = sample.image.shape[:2]
        images.append({"id": index + 1, "file_name": f"images/{name}", "width": width, "height": height})
        for box, class_id in zip(box_xyxy_to_xywh(sample.boxes), sample.class_ids):
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": int(class_id) + 1,
                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0,
            })
    document = {
        "info": {"description": "DETR Studio synthetic shapes", "first_seed": first_seed, "count": count},
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(spec.labels)],
        "images": images,
        "annotations": annotations,
    }
    path = directory / "annotations.json"
    tmp = directory / ".annotations.json.tmp"
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.shapes DIR [--count 300] [--first-seed 0] [--with-star]``: write a COCO directory."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m datasets.shapes", description="Write synthetic shapes as COCO.")
    parser.add_argument("out", type=Path, help="directory to write (images/ and annotations.json)")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first_seed..first_seed+count-1 (the bundled model trained on seeds >= 1,000,000)")
    parser.add_argument("--with-star", action="store_true", help="include the fourth class, star")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    path = write_coco(args.out, args.count, args.first_seed, ShapesSpec(with_star=args.with_star))
    print(f"wrote {args.count} images to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

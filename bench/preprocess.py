"""Benchmark 1: our preprocessing vs transformers' DETR image processor, side by side in one process.

    python bench/preprocess.py [--quick]

64 RGB images of mixed sizes (640x480 to 1920x1080, both orientations), resized to shortest edge
800 / longest 1333, normalized, padded, with the pixel mask: as one batch and one image at a time.
The baseline is the default, non-fast processor of transformers 5 that runs without torchvision
(`DetrImageProcessorPil`). On CUDA ours also runs on the device (input upload included).
Parity: identical pixel masks, pixel values within one 8-bit level. Prints a table, then one JSON
line per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # noqa: E402

from bench.timing import device_label, timed  # noqa: E402
from core.loading import PreprocessConfig  # noqa: E402
from core.preprocess import preprocess  # noqa: E402

SIZES = [(480, 640), (720, 1280), (1080, 1920), (640, 480), (768, 1024), (1080, 1440), (600, 800), (1280, 720)]


def images(count: int, scale: float) -> list[np.ndarray]:
    """Smooth random pictures (resizing cost does not depend on content; parity is checked on them)."""
    rng = np.random.default_rng(0)
    result = []
    for i in range(count):
        height, width = (round(side * scale) for side in SIZES[i % len(SIZES)])
        small = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        result.append(np.kron(small, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 half-size images, 1 repeat (a test runs this)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count, scale, repeats = (8, 0.5, 1) if args.quick else (64, 1.0, 3)
    short, long = (400, 667) if args.quick else (800, 1333)
    pictures = images(count, scale)
    processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": long})
    config = PreprocessConfig(shortest_edge=short, longest_edge=long)
    rows = []
    for mode in ("batch", "single"):
        if mode == "batch":
            ours_s, ours = timed(lambda: preprocess(pictures, config, device), repeats, device)
            base_s, theirs = timed(lambda: processor(images=pictures, return_tensors="pt"), repeats, device)
            pairs = [(ours.pixel_values.cpu(), ours.pixel_mask.cpu(), theirs["pixel_values"], theirs["pixel_mask"])]
        else:
            ours_s, ours = timed(lambda: [preprocess([p], config, device) for p in pictures], repeats, device)
            base_s, theirs = timed(lambda: [processor(images=[p], return_tensors="pt") for p in pictures], repeats,
                                   device)
            pairs = [(o.pixel_values.cpu(), o.pixel_mask.cpu(), t["pixel_values"], t["pixel_mask"])
                     for o, t in zip(ours, theirs)]
        parity = all(torch.equal(om, tm) and (ov - tv).abs().max().item() < 0.018 for ov, om, tv, tm in pairs)
        rows.append({"bench": "preprocess", "setting": f"{count} images, {mode}", "device": device_label(device),
                     "ours": count / ours_s, "baseline": count / base_s, "unit": "images/s",
                     "speedup": base_s / ours_s, "parity": parity})
    print(f"{'setting':<22}{'ours img/s':>12}{'transformers img/s':>20}{'speedup':>9}  parity")
    for row in rows:
        print(f"{row['setting']:<22}{row['ours']:>12.1f}{row['baseline']:>20.1f}{row['speedup']:>8.1f}x  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["parity"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

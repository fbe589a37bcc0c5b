"""Benchmark 2: detect one image on CPU, our path vs transformers' object-detection pipeline.

    python bench/detect_cpu.py [--quick] [--threads 2]

Full-size DETR-R50 built from its config with random weights (the released model's FLOPs, no
download), the same model object for both. Ours: `core.inference.predict` (decode, preprocess in
torch, model, every query's probabilities and boxes). Baseline: `transformers.pipeline(
"object-detection")` with the DETR image processor that runs without torchvision. One 640x480
photo (skimage's coffee), shortest edge 800 and 512, median of 5 after a warm-up. Parity: the
every query's label equal, score within 0.01, box within 2 px (the
pipeline rounds boxes to whole pixels). Prints a table, then
one JSON line per size. ``--quick`` uses a tiny model so a test can run it in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skimage import data  # noqa: E402
from transformers import DetrForObjectDetection, pipeline  # noqa: E402
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # noqa: E402

from bench.models import detr_config  # noqa: E402
from bench.timing import timed  # noqa: E402
from core.inference import predict  # noqa: E402
from core.loading import load_detector  # noqa: E402


def build(quick: bool, directory: Path) -> Path:
    """Save DETR (R50, or tiny with ``quick``) with random weights to ``directory``; returns it."""
    torch.manual_seed(0)
    model = DetrForObjectDetection(detr_config(quick, **({"init_std": 0.3} if quick else {}))).eval()
    with torch.no_grad():  # random DETR gives every query the same output; spread them so there is something to match
        model.class_labels_classifier.weight.mul_(3)
        model.model.query_position_embeddings.weight.mul_(30)
    model.save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = data.coffee()
    repeats = 1 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        detector = load_detector(build(args.quick, Path(tmp)), device="cpu")
        rows = []
        for short in (800, 512):
            long = round(short * 1333 / 800)
            processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": long})
            detect = pipeline("object-detection", model=detector.model, image_processor=processor, device="cpu")
            from PIL import Image

            picture = Image.fromarray(image)
            ours_s, ours = timed(lambda: predict(detector, [image], shortest_edge=short)[0], repeats, warmup=True)
            base_s, theirs = timed(lambda: detect(picture, threshold=0.0), repeats, warmup=True)
            # threshold 0: the pipeline returns every query, in query order, as we do
            their_boxes = np.array([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in theirs])
            height, width = image.shape[:2]
            their_boxes = np.clip(their_boxes, 0, [width, height, width, height])  # ours are clipped to the image
            parity = (len(theirs) == ours.num_queries
                      and [d["label"] for d in theirs] == [ours.labels[i] for i in ours.label_ids]
                      and np.abs(np.array([d["score"] for d in theirs]) - ours.scores).max() < 1e-2
                      and np.abs(their_boxes - ours.boxes).max() <= 2.0)  # the pipeline rounds to whole pixels
            rows.append({"bench": "detect_cpu", "setting": f"{'tiny' if args.quick else 'DETR-R50'} at {short}",
                         "device": f"cpu ({args.threads} threads)", "ours": ours_s * 1e3, "baseline": base_s * 1e3,
                         "unit": "ms per image", "speedup": base_s / ours_s, "parity": bool(parity)})
    print(f"{'setting':<20}{'ours ms':>10}{'pipeline ms':>13}{'speedup':>9}  parity")
    for row in rows:
        print(f"{row['setting']:<20}{row['ours']:>10.0f}{row['baseline']:>13.0f}{row['speedup']:>8.2f}x  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["parity"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

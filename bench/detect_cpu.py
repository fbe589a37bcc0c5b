"""Benchmark 2: detect one image on CPU, our path vs transformers' object-detection pipeline.

    python bench/detect_cpu.py [--quick] [--threads 2]

Full-size DETR-R50 built from its config with random weights (the released model's FLOPs, no
download), the same model object for both. Ours: `core.inference.predict` (decode, preprocess in
torch, model, every query's probabilities and boxes). Baseline: `transformers.pipeline(
"object-detection")` with the DETR image processor that runs without torchvision. One 640x480
photo (skimage's coffee), shortest edge 800 and 512, median of 5 after a warm-up. Ours runs in
fp32 and, where the CPU has bf16 support (AVX512-BF16 / AMX), again under bf16 autocast
(`Detector.cpu_bf16`). Parity, fp32: every query's label equal, score within 0.01, box within
2 px (the pipeline rounds boxes to whole pixels); bf16: labels equal on at least 95% of queries,
scores within 0.05. Prints a table, then one JSON line per row. ``--quick`` uses a tiny model (fp32
only) so a test can run it in seconds.
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
    bf16_supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with tempfile.TemporaryDirectory() as tmp:
        detector = load_detector(build(args.quick, Path(tmp)), device="cpu")  # channels-last, as loaded
        model = detector.model
        from PIL import Image

        picture = Image.fromarray(image)
        height, width = image.shape[:2]
        rows = []
        for short in (800, 512):
            long = round(short * 1333 / 800)
            processor = DetrImageProcessorPil(size={"shortest_edge": short, "longest_edge": long})
            detect = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
            # The baseline runs the model as transformers leaves it (contiguous weights); ours as
            # load_detector leaves it (channels-last). Same object, converted in place between runs.
            model.to(memory_format=torch.contiguous_format)
            base_s, theirs = timed(lambda: detect(picture, threshold=0.0), repeats, warmup=True)
            model.to(memory_format=torch.channels_last)
            # threshold 0: the pipeline returns every query, in query order, as we do
            their_labels = [d["label"] for d in theirs]
            their_scores = np.array([d["score"] for d in theirs])
            their_boxes = np.array([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in theirs])
            their_boxes = np.clip(their_boxes, 0, [width, height, width, height])  # ours are clipped to the image
            # --quick skips bf16: the tiny random model's huge activations make bf16 meaningless there
            for bf16 in (False, True) if bf16_supported and not args.quick else (False,):
                detector.cpu_bf16 = bf16
                ours_s, ours = timed(lambda: predict(detector, [image], shortest_edge=short)[0], repeats, warmup=True)
                agree = float(np.mean([a == ours.labels[i] for a, i in zip(their_labels, ours.label_ids)]))
                score_diff = float(np.abs(their_scores - ours.scores).max())
                box_diff = float(np.abs(their_boxes - ours.boxes).max())
                if bf16:  # bf16 rounds every activation: near-ties may flip, scores move by ~1e-2
                    parity = len(theirs) == ours.num_queries and agree >= 0.95 and score_diff < 0.05
                else:  # the pipeline rounds boxes to whole pixels
                    parity = len(theirs) == ours.num_queries and agree == 1.0 and score_diff < 1e-2 and box_diff <= 2.0
                rows.append({"bench": "detect_cpu", "device": f"cpu ({args.threads} threads)",
                             "setting": f"{'tiny' if args.quick else 'DETR-R50'} at {short}, {'bf16' if bf16 else 'fp32'}",
                             "ours": ours_s * 1e3, "baseline": base_s * 1e3, "unit": "ms per image",
                             "speedup": base_s / ours_s, "parity": bool(parity), "labels_agree": agree,
                             "max_score_diff": score_diff, "max_box_diff_px": box_diff})
    print(f"{'setting':<28}{'ours ms':>10}{'pipeline ms':>13}{'speedup':>9}  labels agree  max score diff  parity")
    for row in rows:
        print(f"{row['setting']:<28}{row['ours']:>10.0f}{row['baseline']:>13.0f}{row['speedup']:>8.2f}x"
              f"{row['labels_agree']:>14.3f}{row['max_score_diff']:>16.4f}  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["parity"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

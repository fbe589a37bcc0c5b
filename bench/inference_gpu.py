"""Benchmark 3: batched inference throughput, our path vs the object-detection pipeline, with MFU.

    python bench/inference_gpu.py [--quick] [--batches 1 8 32]

Full-size DETR-R50 from its config (random weights), 800x1333 images, the same model object for
both. Ours: `core.inference.predict` (preprocessing on the device, bf16 autocast on CUDA, every
query kept). Baseline: `transformers.pipeline("object-detection", batch_size=B)` (fp32). Reports
images/s per batch size, the model's FLOPs per image (torch's FLOP counter on one forward) and
MFU = achieved FLOP/s / the device's measured matmul peak (bf16 on CUDA, fp32 on CPU). Parity:
every query's label and score agree on the first image (scores within 0.05: bf16). Runs on CPU
too (slowly); ``--quick`` uses a tiny model and small images so a test can run it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402
from transformers import pipeline  # noqa: E402
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil  # noqa: E402

from bench.detect_cpu import build  # noqa: E402
from bench.timing import device_label, timed  # noqa: E402
from core.inference import predict  # noqa: E402
from core.loading import load_detector  # noqa: E402
from core.preprocess import preprocess  # noqa: E402


def matmul_peak(device: torch.device) -> float:
    """Measured FLOP/s of a large square matmul (bf16 on CUDA, fp32 on CPU)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    repeats, start = 20 if device.type == "cuda" else 5, time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batches = [1, 2] if args.quick else args.batches
    height, width = (120, 200) if args.quick else (800, 1333)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(max(batches) * 2)]
    pictures = [Image.fromarray(image) for image in images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        detector = load_detector(build(args.quick, Path(tmp)), device=device)
        config = detector.preprocess
        batch = preprocess(images[:1], config, device, height, width)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            detector.model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask)
        flops = counter.get_total_flops()
        peak = matmul_peak(device)
        processor = DetrImageProcessorPil(size={"shortest_edge": height, "longest_edge": width})
        for size in batches:
            detect = pipeline("object-detection", model=detector.model, image_processor=processor, device=device,
                              batch_size=size)
            work = images[: size * 2]

            def ours():
                return predict(detector, work, shortest_edge=height, longest_edge=width, batch_size=size)

            def theirs():
                return detect(pictures[: size * 2], threshold=0.0)

            ours_s, mine = timed(ours, 1, device, warmup=True)
            base_s, reference = timed(theirs, 1, device, warmup=True)
            mine, reference = mine[0], reference[0]
            parity = (len(reference) == mine.num_queries
                      and [d["label"] for d in reference] == [mine.labels[i] for i in mine.label_ids]
                      and np.abs(np.array([d["score"] for d in reference]) - mine.scores).max() < 0.05)
            ours_rate, base_rate = len(work) / ours_s, len(work) / base_s
            rows.append({"bench": "inference_gpu", "setting": f"{'tiny' if args.quick else 'DETR-R50'} batch {size}",
                         "device": device_label(device), "ours": ours_rate, "baseline": base_rate,
                         "unit": "images/s", "speedup": ours_rate / base_rate,
                         "parity": bool(parity), "gflops_per_image": flops / 1e9,
                         "mfu": ours_rate * flops / peak, "peak_tflops": peak / 1e12})
    print(f"{'setting':<22}{'ours img/s':>11}{'pipeline img/s':>16}{'speedup':>9}{'GFLOP/img':>11}{'MFU':>8}  parity")
    for row in rows:
        print(f"{row['setting']:<22}{row['ours']:>11.2f}{row['baseline']:>16.2f}{row['speedup']:>8.2f}x"
              f"{row['gflops_per_image']:>11.1f}{row['mfu']:>8.1%}  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["parity"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

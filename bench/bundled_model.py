"""Benchmark: a candidate bundled model against the shipped one, side by side in one process.

    python bench/bundled_model.py --candidate data/bundled_288 [--baseline-rev HEAD] [--repeats 9]

The bundled model's limits (issue: a strong bundled model) are weights <= 12 MB and CPU latency
of one 512 px image <= 2x the shipped model's. Both models detect the same 512x384 shapes image,
each at its own inference size (its ``preprocessor_config.json``), end to end through
`core.inference.predict`, with PyTorch and with the default engine (OpenVINO); the two models'
runs alternate, so a busy machine slows both alike. Median of ``--repeats`` after a warm-up.
The baseline is ``assets/bundled`` as committed at ``--baseline-rev`` (or ``--baseline DIR``).
Prints a table, then one JSON line per row. ``--quick``: one repeat, PyTorch only (for a test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.engines import DEFAULT_ENGINE, attach_engine  # noqa: E402
from core.inference import predict  # noqa: E402
from core.loading import load_detector  # noqa: E402
from datasets.shapes import generate_sample  # noqa: E402

MODEL_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")
IMAGE_SIZE = (512, 384)  # width, height: "one 512 px image"


def committed_model(rev: str, folder: Path) -> Path:
    """``assets/bundled`` as committed at ``rev``, written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        blob = subprocess.run(["git", "show", f"{rev}:assets/bundled/{name}"], cwd=ROOT, capture_output=True,
                              check=True).stdout
        (folder / name).write_bytes(blob)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", type=Path, default=ROOT / "assets" / "bundled")
    parser.add_argument("--baseline", type=Path, default=None, help="a model folder (default: --baseline-rev's)")
    parser.add_argument("--baseline-rev", default="HEAD")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    engines = ["torch"] if args.quick else ["torch", DEFAULT_ENGINE]
    image = np.asarray(Image.fromarray(generate_sample(5).image).resize(IMAGE_SIZE, Image.BILINEAR))
    with tempfile.TemporaryDirectory() as tmp:
        baseline_dir = args.baseline or committed_model(args.baseline_rev, Path(tmp) / "baseline")
        models = {"baseline": load_detector(baseline_dir, device="cpu"),
                  "candidate": load_detector(args.candidate, device="cpu")}
        sizes = {name: d.preprocess.shortest_edge for name, d in models.items()}
        megabytes = {name: (Path(d.source) / "model.safetensors").stat().st_size / 2**20 for name, d in models.items()}
        rows = []
        for engine in engines:
            for name, detector in models.items():
                if note := attach_engine(detector, engine, Path(tmp) / "engines", args.threads):
                    raise SystemExit(note)
                predict(detector, [image])  # warm-up
            times = {name: [] for name in models}
            for _ in range(repeats):  # alternate, so both see the same machine
                for name, detector in models.items():
                    start = time.perf_counter()
                    predict(detector, [image])
                    times[name].append(time.perf_counter() - start)
            base_ms = statistics.median(times["baseline"]) * 1e3
            ours_ms = statistics.median(times["candidate"]) * 1e3
            rows.append({"bench": "bundled_model", "device": f"cpu ({args.threads} threads)", "engine": engine,
                         "setting": f"512x384 image, candidate at {sizes['candidate']} vs baseline at "
                                    f"{sizes['baseline']}, {engine}",
                         "ours": ours_ms, "baseline": base_ms, "unit": "ms per image", "speedup": base_ms / ours_ms,
                         "latency_ratio": ours_ms / base_ms, "weights_mb": megabytes["candidate"],
                         "baseline_weights_mb": megabytes["baseline"],
                         "parity": None,  # two different models: no outputs to compare
                         # the limits the bundled model keeps: <= 2x the latency, <= 12 MB of weights
                         "within_limits": ours_ms <= 2 * base_ms and megabytes["candidate"] <= 12,
                         "date": time.strftime("%Y-%m-%d")})
    print(f"{'engine':<12}{'candidate ms':>14}{'baseline ms':>13}{'ratio':>8}{'weights MB':>12}  within limits")
    for row in rows:
        print(f"{row['engine']:<12}{row['ours']:>14.1f}{row['baseline']:>13.1f}{row['latency_ratio']:>7.2f}x"
              f"{row['weights_mb']:>12.1f}  {row['within_limits']}")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

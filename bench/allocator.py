"""Benchmark: glibc's default malloc against `core.allocator.keep_freed_memory`, fine-tune steps and inference.

    python bench/allocator.py [--rounds 5] [--steps 12] [--threads 2] [--quick]

What the star check's fine-tune does, on the CPU: the bundled model, ``trainable="last_layer"``,
batch 8 of star-domain shapes images with the fine-tune's augmentation (copy-paste, flips, scale
jitter), query distillation off; and `core.inference.predict` on 8 images. An allocator setting
is process-wide and glibc's default (its dynamic mmap threshold) cannot be restored once changed,
so each arm runs in its own fresh process; the two arms' processes alternate, ``--rounds`` each,
so a busy machine slows both alike. Per process: median of the timed steps after 2 warm-up steps,
median of 3 inference calls after a warm-up, peak resident memory and the share of CPU time spent
in the kernel. The table gives the median over rounds. Parity: both arms' losses after the last
step are equal (the allocator changes where memory lives, not what is computed).
``--quick``: one round, 2 timed steps (for a test). Prints a table, then one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = ("default", "keep_freed_memory")


def worker(arm: str, steps: int, threads: int) -> dict:
    """One process's measurements (runs in the child)."""
    import torch

    from core.allocator import keep_freed_memory

    set_up = keep_freed_memory() if arm == "keep_freed_memory" else False
    torch.set_num_threads(threads)
    from core.inference import predict
    from core.loading import load_detector
    from core.train import train
    from datasets.shapes import ShapesDataset, ShapesSpec
    from training.config import finetune_training

    detector = load_detector("bundled", device="cpu")
    dataset = ShapesDataset(32, 2_000_000, ShapesSpec(with_star=False))
    config = replace(finetune_training(), max_steps=steps + 2, log_every=1)  # the fine-tune's own settings
    stamps: list[float] = []
    result = train(detector.model, dataset, config, detector.preprocess, detector.labels,
                   progress=lambda progress: stamps.append(time.perf_counter()))
    step_s = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # steps 3.. (2 warm-up)
    images = [dataset[i][0] for i in range(8)]
    detector.model.eval()
    predict(detector, images)
    predict_s = []
    for _ in range(3):
        start = time.perf_counter()
        predict(detector, images)
        predict_s.append(time.perf_counter() - start)
    times = os.times()
    return {"arm": arm, "set_up": set_up, "step_s": step_s, "predict_s": statistics.median(predict_s),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "system_share": times.system / max(times.user + times.system, 1e-9),
            "loss": result.last_losses.get("loss")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds, steps = (1, 2) if args.quick else (args.rounds, args.steps)
    if args.worker:
        print(json.dumps(worker(args.worker, steps, args.threads)))
        return 0
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    for _ in range(rounds):
        for arm in ARMS:
            child = subprocess.run([sys.executable, __file__, "--worker", arm, "--steps", str(steps),
                                    "--threads", str(args.threads)], capture_output=True, text=True, cwd=ROOT,
                                   env=environment)
            if child.returncode != 0:
                raise SystemExit(f"the {arm} worker failed:\n{child.stderr[-3000:]}")
            runs[arm].append(json.loads(child.stdout.strip().splitlines()[-1]))
    ours, base = runs["keep_freed_memory"], runs["default"]
    parity = all(a["loss"] == b["loss"] for a, b in zip(ours, base)) and all(r["set_up"] for r in ours)
    device = f"cpu ({args.threads} threads)"
    rows = []
    for what, key, unit in (("fine-tune step, batch 8", "step_s", "ms per step"),
                            ("inference, 8 images", "predict_s", "ms per call")):
        ours_ms = statistics.median(r[key] for r in ours) * 1e3
        base_ms = statistics.median(r[key] for r in base) * 1e3
        rows.append({"bench": "allocator", "device": device, "setting": what, "ours": ours_ms, "baseline": base_ms,
                     "unit": unit, "speedup": base_ms / ours_ms, "parity": parity, "rounds": rounds,
                     "peak_mb": statistics.median(r["peak_mb"] for r in ours),
                     "baseline_peak_mb": statistics.median(r["peak_mb"] for r in base),
                     "system_share": statistics.median(r["system_share"] for r in ours),
                     "baseline_system_share": statistics.median(r["system_share"] for r in base),
                     "date": time.strftime("%Y-%m-%d")})
    print(f"{'what':<26}{'keep freed':>12}{'default':>10}{'speedup':>9}{'peak MB':>15}{'kernel CPU':>14}")
    for row in rows:
        print(f"{row['setting']:<26}{row['ours']:>12.0f}{row['baseline']:>10.0f}{row['speedup']:>8.2f}x"
              f"{row['peak_mb']:>7.0f} / {row['baseline_peak_mb']:<5.0f}"
              f"{row['system_share']:>6.0%} / {row['baseline_system_share']:.0%}")
    print(f"parity (same losses in both arms): {parity}")
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

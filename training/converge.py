"""Convergence experiment for hybrid-assignment training (Co-DETR, H-DETR) on the shapes domain.

    python -m training.converge [--models detr conditional_detr] [--seeds 0 1] [--epochs 8] [--out data/converge]

Arms, all on the same schedule and data: ``baseline`` (one-to-one only), ``atss`` (Co-DETR's ATSS
head only: lambda1 = 0), ``queries`` (Co-DETR's positive queries only: lambda2 = 0), ``co-detr``
(both, K = 1) and ``h-detr`` (the one-to-many query group). Models: the small DETR and Conditional
DETR configurations (the bundled model's size: d 128, 2 encoder and 4 decoder layers, 100
queries). To get measurable AP within a CPU budget, the backbone, input projection and encoder
start from the bundled model (``--init encoder``; ``backbone`` starts only the backbone) and the
backbone stays frozen (``--trainable transformer``); decoder, heads, queries and every auxiliary
module start random. COCO AP on held-out images after every epoch.

Each run is a subprocess (``--parallel`` at a time, ``--threads`` each), so peak memory (max RSS;
GPU: peak allocated) is per run; a finished run's JSON is kept and not run again. The table
(``table.md`` in ``--out``, also printed) has, per model and arm: AP per epoch (mean of seeds),
final AP (each seed), steps to reach the baseline's final AP, training ms per step, peak memory;
then AP against training CPU time (each run's ``time.process_time``, evaluation subtracted), mean
and std of the seeds at equal CPU marks, and which arm leads at the last. ``--cpu-minutes`` gives
every arm the same CPU budget instead of the same number of steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.allocator import keep_freed_memory

ARMS = {
    "baseline": {"method": "off"},
    "atss": {"method": "co-detr", "co_detr_lambda1": 0.0},
    "queries": {"method": "co-detr", "co_detr_lambda2": 0.0},
    "co-detr": {"method": "co-detr"},
    "h-detr": {"method": "h-detr"},
}
MODELS = ("detr", "conditional_detr")
EVAL_FIRST_SEED = 5_000_000  # held-out images, used nowhere else
# Anchors for the shapes domain: objects are 10-45% of the shorter side, 13-58 px at 128 px, so
# levels 8-64 with anchors of 4 strides (32-256 px) rather than ATSS's 8 strides (64-1024 px).
STRIDES, ANCHOR_SCALE = (8, 16, 32, 64), 4.0


@dataclass
class Experiment:
    """What the experiment runs: models, arms and seeds, and the one schedule they share."""

    models: Sequence[str] = field(default=MODELS, metadata={"choices": MODELS})
    arms: Sequence[str] = field(default=tuple(ARMS), metadata={"choices": tuple(ARMS)})
    seeds: Sequence[int] = (0, 1)
    epochs: int = 10
    images: int = field(default=800, metadata={"help": "training images (one epoch)"})
    eval_images: int = 60
    batch_size: int = 8
    lr: float = 2e-4
    init: str = field(default="encoder", metadata={"choices": ("backbone", "encoder"),
                                                    "help": "what starts from the bundled model; the rest is random"})
    trainable: str = field(default="transformer",
                           metadata={"help": "core.train's trainable (transformer: backbone frozen)"})
    shortest_edge: int = field(default=128, metadata={"help": "training and evaluation resolution"})
    cpu_minutes: float | None = field(default=None, metadata={
        "help": "stop a run at the end of the first epoch after this much CPU time spent training (evaluation not "
                "counted); --epochs is then an upper bound. Gives every arm the same CPU budget"})
    threads: int = field(default=1, metadata={"help": "torch threads per run"})
    parallel: int = field(default=2, metadata={"help": "runs at a time"})
    out: Path = Path("data/converge")


def small_model(kind: str, labels: list[str], seed: int, init: str = "encoder"):
    """The bundled model's architecture as ``kind``; the backbone's weights (``init="backbone"``)
    or the backbone's, input projection's and encoder's (``"encoder"``) from the bundled model."""
    from transformers import DetrConfig, DetrForObjectDetection

    from core.loading import load_detector
    from training.train_default import bundled_config

    torch.manual_seed(seed)
    config = bundled_config(labels)
    if kind == "detr":
        model = DetrForObjectDetection(DetrConfig(**{k: v for k, v in config.to_dict().items()
                                                     if k not in ("model_type", "architectures")}))
    else:
        from transformers import ConditionalDetrForObjectDetection

        model = ConditionalDetrForObjectDetection(config)
    bundled = load_detector("bundled", device="cpu").model
    parts = ["backbone"] + (["input_projection", "encoder"] if init == "encoder" else [])
    for part in parts:
        getattr(model.model, part).load_state_dict(getattr(bundled.model, part).state_dict())
    return model


def run_one(kind: str, arm: str, seed: int, args: Experiment) -> dict:
    from core.evaluate import evaluate_model
    from core.family import family_of
    from core.hybrid import HybridConfig, build_branch
    from core.loading import Detector, load_detector
    from core.train import TrainConfig, train
    from datasets.shapes import ShapesSpec
    from training.train_default import TRAIN_FIRST_SEED, CachedShapes

    spec = ShapesSpec()
    model = small_model(kind, spec.labels, seed, args.init)
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
    preprocess = load_detector("bundled", device="cpu").preprocess
    dataset = CachedShapes(args.images, TRAIN_FIRST_SEED, spec)
    steps_per_epoch = -(-len(dataset) // args.batch_size)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_backbone=args.lr / 10, weight_decay=1e-4,
        grad_clip=0.1, schedule="constant", warmup_steps=0, freeze_stem=True, trainable=args.trainable, shortest_edge=args.shortest_edge,
        longest_edge=args.shortest_edge * 4 // 3, hflip=0.5, seed=seed, log_every=10**9)
    hybrid = HybridConfig(co_detr_strides=STRIDES, anchor_scale=ANCHOR_SCALE, **ARMS[arm])
    branch = build_branch(model, len(spec.labels), hybrid, config.trainable, seed=seed)
    detector = Detector(model, spec.labels, family_of(model), f"{kind}-{arm}", Path("."), preprocess)
    curve, cpu_s, evaluating, evaluating_cpu = [], [], 0.0, 0.0

    def epoch_end(epoch: int) -> bool:
        nonlocal evaluating, evaluating_cpu
        started, started_cpu = time.perf_counter(), time.process_time()
        cpu_s.append(round(started_cpu - training_cpu_start - evaluating_cpu, 2))  # training CPU so far
        curve.append(round(evaluate_model(detector, args.out / "val", shortest_edge=args.shortest_edge).AP, 4))
        evaluating += time.perf_counter() - started
        evaluating_cpu += time.process_time() - started_cpu
        print(f"{kind} {arm} seed {seed} epoch {epoch + 1}: AP {curve[-1]:.3f} after {cpu_s[-1]:.0f} CPU s", flush=True)
        return args.cpu_minutes is not None and cpu_s[-1] >= args.cpu_minutes * 60

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started, training_cpu_start = time.perf_counter(), time.process_time()
    result = train(model, dataset, config, preprocess, spec.labels, branch=branch, epoch_end=epoch_end)
    training_s = time.perf_counter() - started - evaluating
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": kind, "arm": arm, "seed": seed, "init": args.init, "ap": curve, "cpu_s": cpu_s,
            "steps_per_epoch": steps_per_epoch,
            "steps": result.step, "ms_per_step": round(1000 * training_s / max(result.step, 1), 1),
            "peak_mb": round(peak / 2**20), "memory": "cuda allocated" if cuda else "max RSS",
            "device": torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"}


def steps_to_reach(curve: list[float], target: float, steps_per_epoch: int) -> int | None:
    """Steps until the (seed-mean) AP curve first reaches ``target``; None if it never does."""
    for epoch, value in enumerate(curve):
        if value >= target - 1e-9:
            return (epoch + 1) * steps_per_epoch
    return None


def ap_at_cpu(run: dict, seconds: float) -> float | None:
    """The AP of ``run``'s last evaluation made within ``seconds`` of training CPU time; None if none was."""
    reached = [ap for ap, cpu in zip(run["ap"], run.get("cpu_s", [])) if cpu <= seconds + 1e-9]
    return reached[-1] if reached else None


def cpu_marks(runs: list[dict], count: int = 6) -> list[float]:
    """``count`` CPU times (s), evenly from the latest first evaluation to the shortest run's total, so
    every run has a value at each."""
    start, end = max(run["cpu_s"][0] for run in runs), min(run["cpu_s"][-1] for run in runs)
    if count < 2 or start >= end:
        return [end]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def table(runs: list[dict]) -> str:
    lines = []
    for kind in MODELS:
        mine = [r for r in runs if r["model"] == kind]
        if not mine:
            continue
        arms = [a for a in ARMS if any(r["arm"] == a for r in mine)]
        mean = {}
        for arm in arms:
            curves = [r["ap"] for r in mine if r["arm"] == arm]
            epochs = min(len(c) for c in curves)  # a CPU budget may stop seeds at different epochs
            mean[arm] = np.mean([c[:epochs] for c in curves], axis=0).tolist()
        steps_per_epoch = mine[0]["steps_per_epoch"]
        target = mean["baseline"][-1] if "baseline" in mean else None
        lines += [f"\n{kind} ({mine[0]['device']}; {steps_per_epoch} steps per epoch)\n",
                  "| arm | AP per epoch (mean of seeds) | final AP (each seed) | steps to baseline's final AP "
                  "| ms/step | peak MB |", "| --- | --- | --- | --- | --- | --- |"]
        for arm in arms:
            own = [r for r in mine if r["arm"] == arm]
            reach = steps_to_reach(mean[arm], target, steps_per_epoch) if target is not None else None
            total = len(mean[arm]) * steps_per_epoch
            curve = " ".join(f"{v:.3f}" for v in mean[arm])
            finals = ", ".join(f"{r['ap'][-1]:.3f}" for r in own)
            lines.append(
                f"| {arm} | {curve} | {finals} "
                f"| {reach if reach is not None else f'not in {total}'} "
                f"| {np.mean([r['ms_per_step'] for r in own]):.0f} | {max(r['peak_mb'] for r in own)} |")
        if all(r.get("cpu_s") for r in mine):
            lines += cpu_table(mine, arms)
    return "\n".join(lines)


def cpu_table(runs: list[dict], arms: list[str]) -> list[str]:
    """AP against training CPU time: mean of seeds (and their standard deviation) at equal CPU marks."""
    marks = cpu_marks(runs)
    lines = [f"\nAP against training CPU time (mean ± std of {len({r['seed'] for r in runs})} seeds; "
             "last evaluation within each mark)\n",
             "| arm | " + " | ".join(f"{m / 60:.1f} CPU-min" for m in marks) + " |",
             "| --- |" + " --- |" * len(marks)]
    best = {}
    for arm in arms:
        own = [r for r in runs if r["arm"] == arm]
        cells = []
        for mark in marks:
            values = [ap_at_cpu(r, mark) for r in own]
            if any(v is None for v in values):
                cells.append("—")
                continue
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}")
            if mark == marks[-1]:
                best[arm] = (float(np.mean(values)), float(np.std(values)))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if best:
        winner = max(best, key=lambda a: best[a][0])
        runner_up = max((a for a in best if a != winner), key=lambda a: best[a][0], default=None)
        if runner_up is not None:
            gap = best[winner][0] - best[runner_up][0]
            spread = max(best[winner][1], best[runner_up][1])
            verdict = "clear" if gap > 2 * spread else "within the seeds' spread"
            lines.append(f"\nAt {marks[-1] / 60:.1f} CPU-min: {winner} leads {runner_up} by {gap:+.3f} AP "
                         f"({verdict}; largest std {spread:.3f}).")
    return lines


def main(argv: list[str] | None = None) -> int:
    from core.flags import add_flags, from_flags, to_argv

    parser = argparse.ArgumentParser(prog="python -m training.converge", description=__doc__.split("\n\n")[0])
    add_flags(parser, Experiment)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "ARM", "SEED"), help=argparse.SUPPRESS)
    namespace = parser.parse_args(argv)
    keep_freed_memory()
    args = from_flags(Experiment, namespace)
    torch.set_num_threads(args.threads)
    if namespace.one:
        kind, arm, seed = namespace.one[0], namespace.one[1], int(namespace.one[2])
        record = run_one(kind, arm, seed, args)
        path = args.out / "runs" / f"{kind}-{arm}-{seed}.json"
        path.with_suffix(".tmp").write_text(json.dumps(record))
        os.replace(path.with_suffix(".tmp"), path)
        return 0

    from datasets.shapes import write_coco

    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if not (args.out / "val" / "annotations.json").is_file():
        write_coco(args.out / "val", args.eval_images, first_seed=EVAL_FIRST_SEED)
    settings = to_argv(args)
    # seed-major, so an interrupted experiment has every arm of the first seed
    todo = [(k, a, s) for s in args.seeds for k in args.models for a in args.arms
            if not (args.out / "runs" / f"{k}-{a}-{s}.json").is_file()]
    running: list[subprocess.Popen] = []
    failed = []
    while todo or running:
        while todo and len(running) < args.parallel:
            kind, arm, seed = todo.pop(0)
            running.append(subprocess.Popen([sys.executable, "-m", "training.converge", "--one", kind, arm, str(seed),
                                             *settings]))
        time.sleep(1)
        for process in [p for p in running if p.poll() is not None]:
            running.remove(process)
            if process.returncode:
                failed.append(" ".join(process.args[4:7]))
    runs = [json.loads(p.read_text()) for p in sorted((args.out / "runs").glob("*.json"))]
    runs = [r for r in runs if r["model"] in args.models and r["arm"] in args.arms and r["seed"] in args.seeds]
    text = table(runs)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Short runs that choose the bundled model's next training by measurement, at equal CPU time:
continue the shipped model with one setting changed for the same wall-clock budget (same machine,
one run after the other, both cores), then score each on validation seeds.

    python -m training.recipe_probe --arms base res320 --minutes 15 --out data/recipe_probe

Validation images use seeds 300-599 (as the inference size was chosen); the reported figures of
the bundled model use seeds 0-299 and fresh ones, never these. Results go to ``OUT/results.json``
and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.allocator import keep_freed_memory
from core.evaluate import evaluate_model
from core.flags import add_flags, from_flags
from core.loading import BUNDLED_DIR, load_detector
from core.train import TrainConfig, train
from datasets.shapes import ShapesSpec, write_coco
from training.train_default import TRAIN_FIRST_SEED, CachedShapes

VALIDATION_FIRST_SEED = 300
# name -> (train shortest edge, train longest edge, evaluation shortest edges)
ARMS = {
    "base": (192, 256, (224,)),  # the shipped model's own resolution
    "res320": (288, 384, (288, 320)),  # about twice the pixels: finer boxes at ~2x the latency
}


@dataclass
class Probe:
    arms: list[str] = field(default_factory=lambda: ["base", "res320"])
    minutes: float = 15.0
    images: int = 3000
    validation: int = 200
    lr: float = 5e-5
    batch_size: int = 16
    out: Path = Path("data/recipe_probe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipe_probe", description=__doc__.split("\n\n")[0])
    add_flags(parser, Probe)
    probe = from_flags(Probe, parser.parse_args(argv))
    keep_freed_memory()
    unknown = [arm for arm in probe.arms if arm not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    spec = ShapesSpec()
    probe.out.mkdir(parents=True, exist_ok=True)
    validation = write_coco(probe.out / "validation", probe.validation, VALIDATION_FIRST_SEED, spec).parent
    dataset = CachedShapes(probe.images, TRAIN_FIRST_SEED + 20_000, spec)  # beyond the 6000 the model saw
    results_file = probe.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    shipped = load_detector("bundled", device="cpu")
    results.setdefault("shipped", {str(size): evaluate_model(shipped, validation, shortest_edge=size).AP
                                   for size in sorted({s for arm in probe.arms for s in ARMS[arm][2]})})
    for arm in probe.arms:
        short, long, eval_sizes = ARMS[arm]
        detector = load_detector(BUNDLED_DIR, device="cpu")
        work = probe.out / arm
        shutil.rmtree(work, ignore_errors=True)
        config = TrainConfig(epochs=10_000, max_steps=10**9, batch_size=probe.batch_size, lr=probe.lr,
                             lr_backbone=probe.lr, weight_decay=1e-4, grad_clip=0.1, schedule="constant",
                             warmup_steps=50, freeze_stem=False, shortest_edge=short, longest_edge=long,
                             scale_jitter=(0.75, 0.875, 1.0, 1.125), hflip=0.5, one_to_many=5, one_to_many_layers=2,
                             log_every=50, checkpoint_dir=str(work))
        started = time.perf_counter()
        result = train(detector.model, dataset, config, detector.preprocess, spec.labels, budget_s=probe.minutes * 60)
        seconds = time.perf_counter() - started
        detector.model.config.auxiliary_loss = False
        detector.model.eval()
        scores = {str(size): evaluate_model(detector, validation, shortest_edge=size).AP for size in eval_sizes}
        results[arm] = {"steps": result.step, "train_seconds": round(seconds, 1), "AP": scores,
                        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
        results_file.write_text(json.dumps(results, indent=1))
        print(f"{arm}: {result.step} steps in {seconds / 60:.1f} min; validation AP {scores}", flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproduce the bundled default model: a small Conditional DETR trained from scratch on shapes.

    python -m training.train_default [--steps 4000] [--out assets/bundled] [--work data/train_default]

The shipped model is four runs of this, each resuming the previous one's checkpoints with a longer
cosine schedule (--steps 4000, 8000, 12000, 14000), then a second phase at 288/384 px from that
model (--init, --steps 4800, --shortest-edge 288) and a third from the second at half its learning
rate (--steps 4500 --lr 5e-5); docs/training.md has the commands, times and AP.
Convergence aids, because DETR from scratch is slow: Conditional DETR's conditional spatial
queries, H-DETR's one-to-many matching on the early decoder layers, a stride-16 backbone at the
resolution the shapes need (shortest edge 192), and light augmentation. Training images are seeds
1,000,000 onwards (6000 of them); evaluation images use seeds below that or far above.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection, ResNetConfig

from core.allocator import keep_freed_memory
from core.flags import add_flags, from_flags
from core.loading import BUNDLED_DIR, DEFAULT_IMAGE_MEAN, DEFAULT_IMAGE_STD
from core.train import Progress, TrainConfig, train
from datasets.shapes import ShapesSpec, generate_sample, to_target

TRAIN_FIRST_SEED = 1_000_000
SHORTEST_EDGE, LONGEST_EDGE = 192, 256  # training resolution (jittered 0.75x to 1.125x)
# Inference resolution written to preprocessor_config.json, chosen on validation images (seeds
# 300-599, disjoint from the reported evaluation on seeds 0-299). 8000 steps: AP 0.578 at 192,
# 0.602 at 224, 0.593 at 256, 0.559 at 288; 14000 steps: 0.627 at 208, 0.642 at 224, 0.636 at 240.
INFERENCE_SHORTEST_EDGE, INFERENCE_LONGEST_EDGE = 224, 299


def bundled_config(labels: list[str]) -> ConditionalDetrConfig:
    """About 2.1M parameters: a 3-stage ResNet (stride 16), 2 encoder and 4 decoder layers, 100 queries."""
    backbone = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 2], layer_type="basic",
                            out_features=["stage3"])
    return ConditionalDetrConfig(
        backbone_config=backbone, d_model=128, encoder_layers=2, decoder_layers=4, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=100, dropout=0.0,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)}, auxiliary_loss=True,
    )


class CachedShapes(torch.utils.data.Dataset):
    """Shapes samples generated once up front (generation would otherwise cost a third of each step)."""

    def __init__(self, count: int, first_seed: int, spec: ShapesSpec):
        self.items = []
        for seed in range(first_seed, first_seed + count):
            sample = generate_sample(seed, spec)
            self.items.append((sample.image, to_target(sample)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def write_preprocessor_config(directory: Path, shortest_edge: int = INFERENCE_SHORTEST_EDGE) -> None:
    longest = round(shortest_edge * INFERENCE_LONGEST_EDGE / INFERENCE_SHORTEST_EDGE)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConditionalDetrImageProcessor", "do_resize": True, "do_normalize": True,
        "image_mean": list(DEFAULT_IMAGE_MEAN), "image_std": list(DEFAULT_IMAGE_STD),
        "size": {"shortest_edge": shortest_edge, "longest_edge": longest},
    }, indent=1))


@dataclass
class Recipe:
    """The bundled model's run: how long, on what, where it keeps its checkpoints."""

    steps: int = 4000
    batch_size: int = 16
    images: int = field(default=6000, metadata={"help": "training images (generated once)"})
    out: Path = BUNDLED_DIR
    work: Path = field(default=Path("data/train_default"), metadata={"help": "checkpoints, resumable"})
    seed: int = 0
    threads: int | None = None
    init: Path | None = field(default=None, metadata={"help": "start from this model's weights (e.g. assets/bundled) "
                                                              "instead of random ones"})
    shortest_edge: int = SHORTEST_EDGE  # training resolution (jittered 0.75x to 1.125x)
    longest_edge: int = LONGEST_EDGE
    inference_edge: int = INFERENCE_SHORTEST_EDGE  # written to preprocessor_config.json (longest scaled alike)
    lr: float = 2e-4
    warmup: int = 200
    minutes: float | None = field(default=None, metadata={"help": "stop after about this long with a checkpoint "
                                                                 "in --work (run again to continue); the model is "
                                                                 "written only when all steps are done"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train_default", description=__doc__.split("\n\n")[0])
    add_flags(parser, Recipe)
    args = from_flags(Recipe, parser.parse_args(argv))
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = ShapesSpec()
    torch.manual_seed(args.seed)
    if args.init is not None:
        model = ConditionalDetrForObjectDetection.from_pretrained(args.init)
        model.config.auxiliary_loss = True
    else:
        model = ConditionalDetrForObjectDetection(bundled_config(spec.labels))
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    started = time.time()
    dataset = CachedShapes(args.images, TRAIN_FIRST_SEED, spec)
    print(f"generated {len(dataset)} training images in {time.time() - started:.0f} s", flush=True)
    config = TrainConfig(
        epochs=10_000, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_backbone=args.lr,
        weight_decay=1e-4, grad_clip=0.1, schedule="cosine", warmup_steps=args.warmup, freeze_stem=False,
        shortest_edge=args.shortest_edge, longest_edge=args.longest_edge, scale_jitter=(0.75, 0.875, 1.0, 1.125), hflip=0.5,
        one_to_many=5, one_to_many_layers=2, seed=args.seed, log_every=50, checkpoint_dir=str(args.work),
        checkpoint_every=500,
    )

    def report(p: Progress) -> None:
        parts = " ".join(f"{k}={v:.3f}" for k, v in p.losses.items())
        print(f"step {p.step}/{p.total_steps} {parts} lr={p.lr:.2e} {p.images_per_s:.1f} img/s "
              f"eta {p.eta_s / 60:.0f} min", flush=True)

    result = train(model, dataset, config, labels=spec.labels, progress=report,
                   budget_s=args.minutes * 60 if args.minutes else None)
    ledger = Path(args.work) / "wall_seconds.json"  # every run's time on this work folder, across sessions
    runs = json.loads(ledger.read_text()) if ledger.is_file() else []
    runs.append({"until_step": result.step, "seconds": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d"),
                 "threads": torch.get_num_threads()})
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ledger.write_text(json.dumps(runs, indent=1))
    if result.status == "paused":
        print(f"paused at step {result.step} of {args.steps}; checkpoint in {args.work}; run the same command "
              "again to continue", flush=True)
        return 0
    model.config.auxiliary_loss = False
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_preprocessor_config(tmp, args.inference_edge)
    (tmp / "training.json").write_text(json.dumps({
        "recipe": "python -m training.train_default", "init": str(args.init) if args.init else None,
        "train_edges": [args.shortest_edge, args.longest_edge], "lr": args.lr,
        "steps": result.step, "seed": args.seed,
        "images": args.images, "batch_size": args.batch_size, "minutes": round((time.time() - started) / 60, 1),
        "minutes_all_runs": round(sum(run["seconds"] for run in runs) / 60, 1),
        "last_losses": result.last_losses,
    }, indent=1))
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"{result.status} after {result.step} steps; saved to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 5: a full training step, our loop vs the model's built-in transformers loss in a plain loop.

    python bench/train_step.py [--quick] [--steps 200]

Full-size DETR-R50 from its config (random weights), batch 8 at 800x1333 (synthetic images with
~7 boxes each), a full step: forward, loss with auxiliary layers, backward, clip 0.1, AdamW.
Ours: `core.train.train` (our matcher and losses, one host transfer per step for matching; on CUDA
bf16 autocast, channels-last, fused AdamW). Baseline: `model(pixel_values, labels=...)` with
transformers' own loss, fp32, plain PyTorch AdamW. Both start from the same weights and see the
same batches (already preprocessed for the baseline, so its time excludes preprocessing).
Parity: the per-step loss curves agree (mean relative difference over the run below 5%; on CPU
both run fp32 and agree far closer). Prints a table, then one JSON line.
``--quick`` uses a tiny model, 96 px images and 6 steps so a test can run it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import DetrForObjectDetection  # noqa: E402

from bench.models import detr_config  # noqa: E402
from bench.timing import device_label  # noqa: E402
from core.loading import PreprocessConfig  # noqa: E402
from core.preprocess import preprocess  # noqa: E402
from core.train import Progress, TrainConfig, epoch_batches, train  # noqa: E402


def build(quick: bool) -> DetrForObjectDetection:
    torch.manual_seed(0)
    return DetrForObjectDetection(detr_config(quick, auxiliary_loss=True, **({"num_labels": 5} if quick else {})))


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, count: int, height: int, width: int, classes: int):
        rng = np.random.default_rng(0)
        self.items = []
        for _ in range(count):
            image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            n = int(np.clip(rng.poisson(7), 1, 20))
            centre, size = rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.3, (n, 2))
            target = {"class_labels": torch.from_numpy(rng.integers(0, classes, n)),
                      "boxes": torch.from_numpy(np.concatenate([centre, size], 1)).float()}
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    steps = 6 if args.quick else args.steps
    height, width, batch = (96, 128, 2) if args.quick else (800, 1333, 8)
    start_model = build(args.quick)
    classes = start_model.config.num_labels
    dataset = Synthetic(batch * 4, height, width, classes)
    config = TrainConfig(epochs=10_000, max_steps=steps, batch_size=batch, lr=1e-4, lr_backbone=1e-5,
                         grad_clip=0.1, freeze_stem=False, shortest_edge=height, longest_edge=width, log_every=1,
                         resume=False)

    # Ours: the project's loop.
    ours_model = copy.deepcopy(start_model)
    our_losses, marks = [], []

    def report(p: Progress) -> None:
        our_losses.append(p.losses["loss"])
        marks.append(time.perf_counter())

    started = time.perf_counter()
    train(ours_model, dataset, config, PreprocessConfig(shortest_edge=height, longest_edge=width),
          progress=report)
    ours_s = time.perf_counter() - started
    warm = min(2, steps - 1)  # drop the first steps (allocation, cudnn autotune) from the rate
    ours_rate = (steps - warm) * batch / (marks[-1] - marks[warm - 1]) if warm else steps * batch / ours_s

    # Baseline: the same batches, transformers' loss, fp32, plain loop.
    model = copy.deepcopy(start_model).to(device).train()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(True)
    backbone = [p for n, p in model.named_parameters() if ".backbone." in f".{n}"]
    rest = [p for n, p in model.named_parameters() if ".backbone." not in f".{n}"]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": 1e-4}, {"params": backbone, "lr": 1e-5}], weight_decay=1e-4)
    batches = []
    per_epoch = epoch_batches(len(dataset), 0, config, 0, 1)
    for step in range(steps):
        indices = epoch_batches(len(dataset), step // len(per_epoch), config, 0, 1)[step % len(per_epoch)]
        items = [dataset[i] for i in indices]
        pixels = preprocess([item[0] for item in items], PreprocessConfig(shortest_edge=height, longest_edge=width),
                            device, height, width)
        batches.append((pixels, [{k: v.to(device) for k, v in item[1].items()} for item in items]))
    their_losses, times = [], []
    for pixels, targets in batches:
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        loss = model(pixel_values=pixels.pixel_values, pixel_mask=pixels.pixel_mask, labels=targets).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        their_losses.append(loss.item())
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter())
    base_rate = (steps - warm) * batch / (times[-1] - times[warm]) if warm else steps * batch / (times[-1] - times[0])

    ours_curve, their_curve = np.array(our_losses), np.array(their_losses)
    relative = np.abs(ours_curve - their_curve) / np.abs(their_curve)
    parity = len(ours_curve) == len(their_curve) and float(relative.mean()) < 0.05
    row = {"bench": "train_step", "setting": f"{'tiny' if args.quick else 'DETR-R50'} batch {batch} {height}x{width}",
           "device": device_label(device), "ours": ours_rate, "baseline": base_rate, "unit": "images/s",
           "speedup": ours_rate / base_rate, "parity": bool(parity), "steps": steps,
           "loss_first": [round(float(ours_curve[0]), 4), round(float(their_curve[0]), 4)],
           "loss_last": [round(float(ours_curve[-1]), 4), round(float(their_curve[-1]), 4)],
           "mean_relative_loss_difference": float(relative.mean())}
    print(f"{'setting':<32}{'ours img/s':>11}{'baseline img/s':>16}{'speedup':>9}  parity  loss first/last (ours | theirs)")
    print(f"{row['setting']:<32}{ours_rate:>11.2f}{base_rate:>16.2f}{row['speedup']:>8.2f}x  {row['parity']!s:<6}  "
          f"{row['loss_first'][0]}/{row['loss_last'][0]} | {row['loss_first'][1]}/{row['loss_last'][1]}")
    print(json.dumps(row))
    return 0 if parity else 1


if __name__ == "__main__":
    sys.exit(main())

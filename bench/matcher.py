"""Benchmark 4: our Hungarian matcher vs transformers' matchers, side by side in one process.

    python bench/matcher.py [--quick]

Per setting: DETR (softmax class cost) and Conditional DETR (focal class cost), batch 8 and 32,
100 queries, 92 / 91 class columns (COCO), target counts drawn like COCO's (mean 7, at most 50),
6 decoder layers. Ours matches all 6 layers in one call (`match_layers`, one host transfer);
transformers' loss calls its matcher once per layer, so the baseline is 6 calls. Times include
synchronization on CUDA. Parity: every layer's total assignment cost equal (rel. 1e-6).
Prints a table, then one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher  # noqa: E402
from transformers.loss.loss_for_object_detection import HungarianMatcher as DetrHungarianMatcher  # noqa: E402

from bench.timing import device_label, timed  # noqa: E402
from core.family import FAMILIES
from core.matcher import HungarianMatcher  # noqa: E402

LAYERS, QUERIES, CLASSES = 6, 100, 91


def coco_like_targets(generator: torch.Generator, batch: int, device: torch.device) -> list[dict]:
    counts = torch.poisson(torch.full((batch,), 7.0), generator=generator).clamp(0, 50).long().tolist()
    targets = []
    for count in counts:
        centre = torch.rand(count, 2, generator=generator) * 0.8 + 0.1
        size = torch.rand(count, 2, generator=generator) * 0.3 + 0.01
        targets.append({"class_labels": torch.randint(0, CLASSES, (count,), generator=generator).to(device),
                        "boxes": torch.cat([centre, size], -1).to(device)})
    return targets


def run(kind: str, batch: int, repeats: int, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(batch)
    columns = CLASSES + FAMILIES[kind].class_columns_extra
    logits = (torch.randn(LAYERS, batch, QUERIES, columns, generator=generator) * 2).to(device)
    boxes = torch.cat([torch.rand(LAYERS, batch, QUERIES, 2, generator=generator) * 0.8 + 0.1,
                       torch.rand(LAYERS, batch, QUERIES, 2, generator=generator) * 0.4 + 0.01], -1).to(device)
    targets = coco_like_targets(generator, batch, device)
    ours = HungarianMatcher.for_family(FAMILIES[kind])
    theirs = (DetrHungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2) if kind == "detr"
              else DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2))

    def baseline():
        return [theirs({"logits": logits[layer], "pred_boxes": boxes[layer]}, targets) for layer in range(LAYERS)]

    ours_s, our_matches = timed(lambda: ours.match_layers(logits, boxes, targets), repeats, device)
    base_s, their_matches = timed(baseline, repeats, device)
    parity = True
    for layer in range(LAYERS):
        cpu_targets = [{k: v.cpu() for k, v in t.items()} for t in targets]
        ours_cost = ours.total_cost(logits[layer].cpu(), boxes[layer].cpu(), cpu_targets, our_matches[layer])
        their_cost = ours.total_cost(logits[layer].cpu(), boxes[layer].cpu(), cpu_targets,
                                     [(i.cpu(), j.cpu()) for i, j in their_matches[layer]])
        parity &= abs(ours_cost - their_cost) <= 1e-6 * max(1.0, abs(their_cost))
    return {"bench": "matcher", "setting": f"{kind} batch {batch}", "device": device_label(device), "ours": ours_s * 1e3,
            "baseline": base_s * 1e3, "unit": "ms per 6-layer match", "speedup": base_s / ours_s, "parity": parity,
            "targets": sum(len(t["class_labels"]) for t in targets)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 8 only, 3 repeats (a test runs this)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batches, repeats = ([8], 3) if args.quick else ([8, 32], 15)
    rows = [run(kind, batch, repeats, device) for kind in ("detr", "conditional_detr") for batch in batches]
    print(f"{'setting':<26}{'targets':>8}{'ours ms':>10}{'transformers ms':>17}{'speedup':>9}  parity")
    for row in rows:
        print(f"{row['setting']:<26}{row['targets']:>8}{row['ours']:>10.2f}{row['baseline']:>17.2f}"
              f"{row['speedup']:>8.1f}x  {row['parity']}")
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["parity"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

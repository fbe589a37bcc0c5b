"""End-to-end check that fine-tuning on reviewed data teaches the bundled model a new class.

    python -m training.star_check [--reviewed 60] [--held-out 100] [--work data/star_check] [--base bundled]
                                  [--review-seed 2000000] [--held-out-seed 3000000] [--unreviewed 0]

1. Generates ``--reviewed`` shapes images in which ``star`` appears (seeds from 2,000,000, used
   nowhere else), adds them to a FiftyOne review dataset through the review store with the
   bundled model's predictions, and saves the generator's boxes as each sample's reviewed truth;
   ``--unreviewed`` more star-domain images (seeds from the review seed + 500,000) are added with
   predictions only, as a real dataset has them (what ``--replay`` draws from).
2. Fine-tunes the bundled model once on that dataset (`training.finetune`, default settings
   unless flags say otherwise), writing the new model to ``WORK/model``.
3. Scores the bundled model and the new one on ``--held-out`` freshly generated images (seeds
   from 3,000,000) with `core.evaluate` and prints AP per class, before and after.

Target (issue 16): AP(star) >= 0.6 after, no old class down by more than 0.03, in at most 8
minutes on 2 CPU cores, with the default settings, on more than one seed set (``--review-seed``,
``--held-out-seed``). Measured figures: docs/fine-tuning.md. The tests run a shortened form.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import supervision as sv

from core.allocator import keep_freed_memory
from core.evaluate import Metrics, evaluate_model
from core.inference import predict
from core.loading import load_detector
from datasets.shapes import ShapesSpec, generate_sample, write_coco
from core.flags import add_flags, from_flags
from training.config import FinetuneConfig
from training.finetune import finetune
from training.job import FinetuneResult

REVIEW_FIRST_SEED, HELD_OUT_FIRST_SEED = 2_000_000, 3_000_000
UNREVIEWED_OFFSET = 500_000  # unreviewed images' seeds start this far after the reviewed ones


def build_review_dataset(store, count: int, first_seed: int = REVIEW_FIRST_SEED, unreviewed: int = 0,
                         base: str = "bundled") -> list[str]:
    """Add ``count`` star-domain images with the ``base`` model's predictions and save their truth;
    then ``unreviewed`` more with predictions only. Returns the reviewed ids."""
    spec = ShapesSpec(with_star=True)
    detector = load_detector(base)

    def add(sample) -> str:
        predictions = predict(detector, [sample.image])[0].to_detections(0.05)
        return store.add_image(sample.image, predictions, model_version=base, labels=detector.labels)

    for seed in range(first_seed + UNREVIEWED_OFFSET, first_seed + UNREVIEWED_OFFSET + unreviewed):
        add(generate_sample(seed, spec))
    ids = []
    for seed in range(first_seed, first_seed + count):
        sample = generate_sample(seed, spec)
        sample_id = add(sample)
        truth = sv.Detections(xyxy=sample.boxes.astype(np.float32),
                              data={"class_name": np.array(sample.class_names, dtype=object)})
        store.save_review(sample_id, truth, revision=store.get(sample_id).revision, reviewer="star_check")
        ids.append(sample_id)
    return ids


def run(reviewed: int, held_out: int, work: Path, config: FinetuneConfig, dataset_name: str | None = None,
        review_seed: int = REVIEW_FIRST_SEED, held_out_seed: int = HELD_OUT_FIRST_SEED, unreviewed: int = 0,
        base: str = "bundled") -> tuple[FinetuneResult, Metrics, Metrics]:
    """Steps 1-3; returns the fine-tune result and the held-out metrics before and after."""
    from datasets.review import ReviewStore

    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "model", ignore_errors=True)
    store = ReviewStore.open(dataset_name or f"star-check-{uuid.uuid4().hex[:8]}", work / "data")
    try:
        build_review_dataset(store, reviewed, review_seed, unreviewed, base)
        result = finetune(store.dataset, base, config, out_dir=work / "model")
    finally:
        if dataset_name is None:
            store.dataset.delete()
    held_out_dir = work / f"held_out-{held_out_seed}-{held_out}"
    if not (held_out_dir / "annotations.json").is_file():
        write_coco(held_out_dir, held_out, held_out_seed, ShapesSpec(with_star=True))
    before = evaluate_model(load_detector(base), held_out_dir)
    after = evaluate_model(load_detector(work / "model"), held_out_dir)
    return result, before, after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.star_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviewed", type=int, default=60)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("data/star_check"))
    parser.add_argument("--review-seed", type=int, default=REVIEW_FIRST_SEED, help="first seed of the reviewed "
                        "images (another seed set: fresh data nobody chose settings on)")
    parser.add_argument("--held-out-seed", type=int, default=HELD_OUT_FIRST_SEED, help="first seed of the held-out "
                        "images")
    parser.add_argument("--base", default="bundled", help="the model fine-tuned (a folder or hub id; default: "
                        "the bundled model)")
    parser.add_argument("--unreviewed", type=int, default=0, help="star-domain images added without review "
                        "(predictions only), for --replay")
    parser.add_argument("--data-dir", type=Path, default=None, help="where FiftyOne's database lives "
                        "(default: WORK/data); FIFTYONE_DATABASE_URI overrides")
    add_flags(parser, FinetuneConfig)
    args = parser.parse_args(argv)
    keep_freed_memory()
    from datasets.database import configure_fiftyone

    configure_fiftyone(args.data_dir or args.work / "data")
    config = from_flags(FinetuneConfig, args)
    started = time.perf_counter()
    result, before, after = run(args.reviewed, args.held_out, args.work, config, review_seed=args.review_seed,
                                held_out_seed=args.held_out_seed, unreviewed=args.unreviewed, base=args.base)
    minutes = (time.perf_counter() - started) / 60
    print(f"fine-tune: {result.status}, best epoch {result.best_epoch}, {result.choices_note}, "
          f"{result.seconds / 60:.1f} min "
          f"({len(result.train_ids)} train / {len(result.val_ids)} validation); whole check {minutes:.1f} min")
    print(f"reviewed seeds from {args.review_seed}, held-out seeds from {args.held_out_seed}")
    print(f"held-out AP on {args.held_out} images | before ({args.base}) | after | change")
    print("--- | --- | --- | ---")
    for name in ["AP", *after.per_class]:
        b = before.AP if name == "AP" else before.per_class.get(name, 0.0)
        a = after.AP if name == "AP" else after.per_class[name]
        b = max(b, 0.0)
        print(f"{'all' if name == 'AP' else name} | {b:.3f} | {a:.3f} | {a - b:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

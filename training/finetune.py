"""Fine-tune a detector on the reviewed samples of a FiftyOne dataset and register a new version.

    python -m training.finetune --dataset NAME [--base MODEL] [--epochs N] [--out DIR] [--data-dir DIR]

It trains on the samples tagged ``reviewed`` (field ``ground_truth``) of any FiftyOne dataset,
reached as the app reaches its store (``FIFTYONE_DATABASE_URI``, else the data directory):

- split: a stable hash of each sample id picks the validation samples (`training.split`);
- labels: the base model's, then class names reviewers typed; new classes extend the
  classification head (`core.heads`), existing rows keep their weights;
- replay (``--replay N``, off by default): N samples of the dataset that are not reviewed join
  training with the base model's confident predictions as their labels (its classes only);
- training: the `core.train` loop (GPU with bf16 when present), flips and scale jitter, early
  stopping on validation AP (COCO, `core.evaluate`) with the best epoch kept; run as a job
  (`training.job`) that can pause and continue;
- output: a new version in the registry (`training.registry`) with before/after metrics, the
  sample ids and the settings, or with ``--out DIR`` a `save_pretrained` directory.

Every field of `training.config.FinetuneConfig` (and of the training and hybrid configs it holds)
is a flag. ``accelerate launch -m training.finetune ...`` trains on several GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.allocator import keep_freed_memory
from core.flags import add_flags, from_flags
from core.hybrid import hybrid_setting_problem
from core.inference import duplicate_iou_problem
from core.loading import HubUnreachableError, ModelLoadError, resolve_model_dir
from core.train import Progress, trainable_problem
from datasets.labels import ReviewError
from datasets.review import reviewed_samples, unreviewed_samples
from training.choices import FORGETTING_LIMIT
from training.config import FinetuneConfig
from training.job import SCORING_S, FinetuneError, FinetuneResult, GpuCall, continue_job, create_job, run_here
from training.registry import Registry
from training.split import validation_ids


def config_problem(config: FinetuneConfig) -> str | None:
    """What is wrong with ``config`` as a message for the user, or None (checked before any work)."""
    return duplicate_iou_problem(config.duplicate_iou) or trainable_problem(config.train.trainable) or \
        hybrid_setting_problem(config.hybrid.method, config.train.trainable, config.train.one_to_many,
                               config.hybrid.co_detr_lambda2)


def prepare(view, base: str, config: FinetuneConfig, work_dir: Path, registry: Registry | None = None,
            on_gpu: GpuCall = run_here) -> dict:
    """Start a job in ``work_dir`` (`training.job`): read the reviewed samples of ``view``, split
    them, load ``base`` (hub id, directory, ``bundled`` or ``version:vNNNN``) and score it on the
    validation part. Runs where the database is (on a ZeroGPU Space: the main process); the model is
    loaded and scored by `training.job.create_job` through ``on_gpu`` (there: in ``@spaces.GPU``).

    Raises `FinetuneError` before anything is written when the data or the settings cannot work.
    """
    if problem := config_problem(config):
        raise FinetuneError(problem)
    try:
        samples = reviewed_samples(view)
    except ReviewError as error:
        raise FinetuneError(str(error)) from None
    val_ids = validation_ids({s.sample_id: s.split_key for s in samples}, config.val_fraction)
    if len(samples) - len(val_ids) < 2 or not val_ids:
        raise FinetuneError(
            f"{len(samples)} reviewed samples give {len(samples) - len(val_ids)} for training and {len(val_ids)} for "
            "validation; review more images (about 10 at least) and try again."
        )
    version_dir = registry.version_dir if registry else None
    try:
        resolve_model_dir(base, version_dir)  # a name that cannot load is refused before any GPU time
    except HubUnreachableError:
        pass  # the bundled model stands in, as everywhere
    except ModelLoadError as error:
        raise FinetuneError(str(error)) from None
    name = view.dataset_name if hasattr(view, "dataset_name") else view.name
    replay = unreviewed_samples(view, config.replay, seed=config.train.seed)  # never reviewed, so never validation
    try:
        return on_gpu(create_job, samples, val_ids, base, base, name, config, str(work_dir), version_dir=version_dir,
                      replay=replay, duration_s=SCORING_S)
    except ModelLoadError as error:
        raise FinetuneError(str(error)) from None


def finetune(view, base: str, config: FinetuneConfig, registry: Registry | None = None, out_dir: Path | None = None,
             work_dir: Path | None = None, **running: Any) -> FinetuneResult:
    """Fine-tune ``base`` (hub id, directory, ``bundled`` or ``version:vNNNN``) on the reviewed
    samples of ``view``; register the result (or write ``out_dir``).

    `prepare`, then the job's chunks until done, then `training.job.finish`. ``running`` goes to
    `training.job.continue_job`: ``progress``, ``on_epoch`` (``{"epoch", "val_AP"}`` after each
    epoch's validation, for a live plot), ``cancel``, ``chunk_s``, ``run``, ``clock``, ``on_gpu`` (where scoring runs). Raises
    `FinetuneError` before any training when the data or the settings cannot work.
    """
    if registry is None and out_dir is None:
        raise FinetuneError("give a registry or an output directory for the new model.")
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finetune-"))) / "job"
        prepare(view, base, config, Path(work_dir), registry, on_gpu=running.get("on_gpu", run_here))
        return continue_job(work_dir, registry, out_dir, **running)


def per_class_table(result: FinetuneResult) -> list[list]:
    """``[class, AP before, AP after, change]`` rows plus the overall AP, for the CLI and the app."""
    rows = [["all classes", round(result.before.AP, 3), round(result.after.AP, 3),
             round(result.after.AP - result.before.AP, 3)]]
    for name in result.labels:
        before = result.before.per_class.get(name, -1.0)
        after = result.after.per_class.get(name, -1.0)
        if before < 0 and after < 0:
            rows.append([name, "no data", "no data", ""])
            continue
        rows.append([name, round(before, 3) if before >= 0 else "n/a", round(after, 3) if after >= 0 else "n/a",
                     round(after - max(before, 0.0), 3)])
    return rows


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from datasets.database import configure_for_dataset

    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="FiftyOne dataset with samples tagged 'reviewed'")
    parser.add_argument("--base", default="bundled", help="hub id, directory, 'bundled' or version:vNNNN")
    parser.add_argument("--out", type=Path, default=None, help="write save_pretrained here instead of the registry")
    parser.add_argument("--data-dir", type=Path, default=None, help="app data directory (default as the app)")
    add_flags(parser, FinetuneConfig)
    args = parser.parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING)
    try:
        data_dir = configure_for_dataset(args.dataset, args.data_dir)
    except ReviewError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import fiftyone as fo

    config = from_flags(FinetuneConfig, args)
    bar = tqdm(total=None, unit="step", dynamic_ncols=True)

    def report(p: Progress) -> None:
        bar.total = p.total_steps
        bar.n = p.step
        bar.set_postfix(loss=f"{p.losses.get('loss', float('nan')):.3f}", ips=f"{p.images_per_s:.1f}")
        bar.refresh()

    def epoch_done(record: dict) -> None:
        bar.write(f"epoch {record['epoch']}: validation AP {record['val_AP']:.3f}")

    try:
        result = finetune(fo.load_dataset(args.dataset), args.base, config,
                          registry=None if args.out else Registry(data_dir / "models"), out_dir=args.out,
                          progress=report, on_epoch=epoch_done)
    except (FinetuneError, ValueError) as error:
        bar.close()
        print(f"error: {error}", file=sys.stderr)
        return 2
    bar.close()
    print(f"{result.status} in {result.seconds / 60:.1f} min; best epoch {result.best_epoch}; "
          f"{len(result.train_ids)} training and {len(result.val_ids)} validation samples; "
          f"{result.choices_note}")
    print(f"{'class':<14}{'AP before':>10}{'AP after':>10}{'change':>8}")
    for name, before, after, change in per_class_table(result):
        print(f"{name:<14}{before!s:>10}{after!s:>10}{change!s:>8}")
    for name, change in result.forgotten.items():
        print(f"forgetting: {name} validation AP {change:+.3f} (more than {FORGETTING_LIMIT} down)")
    print(f"saved: {result.version or result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

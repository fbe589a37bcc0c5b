"""A fine-tune as a job in a folder, in three steps that may run in different processes:

- `create_job` (where the database is, after `training.finetune.prepare` read the reviewed
  samples and split them): scores the base model on the validation part and writes ``job.json``;
- `run_chunk` (the GPU part; on a ZeroGPU Space inside ``@spaces.GPU``): trains from the job's
  last checkpoint until it ends or a time budget is used up; touches only the job folder;
- `finish`: scores the best epoch on validation at a few inference sizes, with and without
  duplicate removal and the test-time flip (`score_best`), and writes it as a registry version (or
  a folder) as chosen.

What validation decides (the epoch kept, stopping, the size, duplicate removal, the flip,
forgetting) is in `training.choices`.

`continue_job` runs the chunks to the end and finishes; after a restart it picks an interrupted
job up from its last checkpoint.

Job folder::

    job.json          base model, labels, settings, the samples (paths and pixel boxes), history, status
    best.safetensors  the weights of the best validation epoch so far
    checkpoints/      the training loop's resumable checkpoints
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import supervision as sv
import torch
from safetensors.torch import load_file, save_file

from core.distill import SHARES_ENCODER, QueryDistillation
from core.evaluate import Metrics, evaluate_images, score_outputs
from core.images import load_image
from core.inference import flip_fused, mirrored, predict
from core.flags import from_dict
from core.heads import extend_head
from core.hybrid import build_branch
from core.loading import Detector, VersionDir, load_detector_or_bundled
from core.train import FROZEN_TRUNK, Progress, train
from datasets.review import ReviewedSample
from training.choices import FORGETTING_LIMIT, forgotten_classes, inference_size, keeps, next_kept, smoothed_ap
from training.config import FinetuneConfig
from training.data import ReviewedDataset, pseudo_labels
from training.registry import Registry
from training.split import RULE

JOB_FILE, BEST_FILE, CHECKPOINTS = "job.json", "best.safetensors", "checkpoints"
CHECKPOINT_GUESS_S = 2.0  # kept free for the pause's checkpoint until one has been timed
DONE = ("finished", "stopped_early")


class FinetuneError(ValueError):
    """Fine-tuning cannot start (too few reviewed samples, bad labels); the message says what to do."""


@dataclass
class FinetuneResult:
    status: str  # "finished", "stopped_early", "cancelled"
    labels: list[str]
    before: Metrics | None
    after: Metrics | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, val AP
    version: str | None = None  # the registry version, or None when cancelled / written to a folder
    forgotten: dict[str, float] = field(default_factory=dict)  # old classes whose AP fell > FORGETTING_LIMIT: change
    out_dir: Path | None = None
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    inference_size: int | None = None  # the new version's shortest edge, chosen on validation (`score_best`)
    duplicate_iou: float | None = None  # the new version's duplicate removal, chosen on validation; None: none
    test_time_flip: bool = False  # whether the new version also runs each image mirrored, chosen on validation

    @property
    def choices_note(self) -> str:
        """What validation chose for the version, in words (CLI, Train tab)."""
        removal = (f"duplicates of a class above IoU {self.duplicate_iou:g} removed" if self.duplicate_iou
                   else "no duplicate removal")
        flip = "each image also run mirrored" if self.test_time_flip else "one pass per image"
        return f"inference at {self.inference_size} px, {removal}, {flip} (chosen on validation)"


def write_json(path: Path, document: dict) -> None:
    """Write ``document`` atomically: a reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


def read_job(work_dir: Path) -> dict:
    return json.loads((Path(work_dir) / JOB_FILE).read_text())


def _record(sample: ReviewedSample) -> dict:
    return {"sample_id": sample.sample_id, "filepath": sample.filepath, "boxes": sample.truth.xyxy.tolist(),
            "names": [str(n) for n in sample.truth.data["class_name"]], "width": sample.width, "height": sample.height}


def _samples(records: list[dict]) -> list[ReviewedSample]:
    return [ReviewedSample(r["sample_id"], r["filepath"], r["width"], r["height"],
                           sv.Detections(xyxy=np.asarray(r["boxes"], dtype=np.float32).reshape(-1, 4),
                                         data={"class_name": np.array(r["names"], dtype=object)}))
            for r in records]


def _evaluate(detector: Detector, samples: list[ReviewedSample], labels: list[str], size: int,
              longest: int) -> Metrics:
    return evaluate_images(detector, [s.filepath for s in samples], [s.truth for s in samples], labels, size,
                           longest_edge=longest)


def longest_edge(job: dict, size: int) -> int:
    """The longest edge that goes with shortest edge ``size`` for this job: the training pair's ratio
    (what validation, the inference sizes tried and the version written all use)."""
    return max(size, round(job["longest"] * size / job["size"]))


def job_config(job: dict) -> FinetuneConfig:
    """The job's settings, as `create_job` wrote them."""
    return from_dict(FinetuneConfig, job["config"])


def create_job(samples: list[ReviewedSample], val_ids: set[str], base: Detector | str, base_name: str, dataset: str,
               config: FinetuneConfig, work_dir: Path, version_dir: VersionDir | None = None,
               replay: list[ReviewedSample] = ()) -> dict:
    """Start a job in ``work_dir`` (emptied first) from ``samples`` split by ``val_ids``: score the
    ``base`` model (a loaded detector, or a name loaded here with ``version_dir``) on the validation
    part, label the ``replay`` samples (unreviewed, never validation) with it, and write
    ``job.json``. Reads and writes only files: on ZeroGPU it runs in the GPU worker."""
    if overlap := {s.sample_id for s in replay} & {s.sample_id for s in samples}:
        raise FinetuneError(f"replay samples must not be reviewed samples; {len(overlap)} are both.")
    if not isinstance(base, Detector):
        base = load_detector_or_bundled(base, version_dir=version_dir)
    train_set = [s for s in samples if s.sample_id not in val_ids]
    val_set = [s for s in samples if s.sample_id in val_ids]
    reviewed_names = [str(name) for s in samples for name in s.truth.data["class_name"]]
    labels = list(base.labels) + [name for name in dict.fromkeys(reviewed_names) if name not in base.labels]
    size, longest = config.train.sizes(base.preprocess)
    base.model.eval()
    started = time.perf_counter()
    before = _evaluate(base, val_set, labels, size, longest)
    validation_s = time.perf_counter() - started
    replay = pseudo_labels(base, list(replay), config.replay_score, size, longest)
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    job = {
        "base": base_name, "base_dir": str(base.source), "kind": base.kind, "dataset": dataset, "labels": labels,
        "base_labels": list(base.labels),
        "size": size, "longest": longest,
        "config": asdict(config), "before": asdict(before), "history": [], "best": {"ap": -1.0, "epoch": -1},
        "status": "prepared", "steps": 0, "seconds": 0.0,
        # seconds one validation takes (the longest seen): kept free at the end of a time-budgeted chunk
        "validation_s": round(validation_s, 3),
        "train": [_record(s) for s in train_set], "val": [_record(s) for s in val_set],
        "replay": [_record(s) for s in replay],  # labelled by the base model, for its own classes only
    }
    write_json(work_dir / JOB_FILE, job)
    return job


def _job_detector(job: dict, device: str | None = None, loaded: Detector | None = None) -> Detector:
    """The job's base model (``loaded``, else loaded here) with its head grown to the job's labels (new
    rows seeded alike every time), without the base's duplicate removal and test-time flip: validation
    scores what the model predicts in one pass, and `score_best` decides the new version's."""
    detector = loaded or load_detector_or_bundled(job["base_dir"], device)
    torch.manual_seed(job_config(job).train.seed)
    try:
        extend_head(detector.model, job["labels"])
    except ValueError as error:
        raise FinetuneError(str(error)) from None
    detector.labels, detector.duplicate_iou, detector.test_time_flip = job["labels"], None, False
    return detector


def run_chunk(
    work_dir: Path,
    progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
    budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Train the job in ``work_dir`` from its last checkpoint until it ends or ``budget_s`` is used up.

    Returns the status: ``"paused"`` (call again to continue: the chunks together give exactly the
    result of one run), ``"finished"``, ``"stopped_early"`` or ``"cancelled"``. On a ZeroGPU Space
    this is the function that runs inside ``@spaces.GPU``; it writes only files under ``work_dir``.
    ``budget_s`` counts from the call: loading the model, the steps, and keeping free at the end the
    time of one validation and a checkpoint (measured, in ``job.json``).
    """
    started, chunk_start = time.perf_counter(), clock()
    work_dir = Path(work_dir)
    job = read_job(work_dir)
    if job["status"] in DONE:
        return job["status"]
    config = job_config(job)
    labels, size = job["labels"], job["size"]
    base = load_detector_or_bundled(job["base_dir"])
    model = base.model
    distill = None
    if config.distill > 0:  # the teacher: a frozen copy of the base model as loaded, before its head grows
        # the student's frozen trunk (or frozen backbone and encoder) serves both
        share_encoder = config.train.trainable in SHARES_ENCODER
        shared = model if config.train.trainable in FROZEN_TRUNK or share_encoder else None
        distill = QueryDistillation(model, len(job.get("base_labels", labels)), weight=config.distill, student=shared,
                                    share_encoder=share_encoder).to(base.device)
    detector = _job_detector(job, loaded=base)  # the student: the same model, its head grown
    train_set, val_set = _samples(job["train"]), _samples(job["val"])
    branch = build_branch(model, len(labels), config.hybrid, config.train.trainable, config.train.one_to_many,
                          seed=config.train.seed)
    train_config = replace(config.train, shortest_edge=size, longest_edge=job["longest"],
                           checkpoint_dir=str(work_dir / CHECKPOINTS), resume=True)

    def validate(epoch: int) -> bool:
        validation_started = time.perf_counter()
        metrics = _evaluate(detector, val_set, labels, size, job["longest"])
        job["validation_s"] = round(max(job.get("validation_s", 0.0), time.perf_counter() - validation_started), 3)
        # a chunk that ended between an epoch's validation and the next checkpoint repeats that epoch
        job["history"] = [h for h in job["history"] if h["epoch"] != epoch] + [{"epoch": epoch, "val_AP": metrics.AP}]
        if on_epoch is not None:
            on_epoch(job["history"][-1])
        job["best"], keep = next_kept(job["best"], epoch, metrics.AP, smoothed_ap(job["history"], config.smooth),
                                      config.tolerance)
        if keep:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, work_dir / BEST_FILE)
        write_json(work_dir / JOB_FILE, job)
        return epoch - job["best"]["top_epoch"] >= config.patience  # no better epoch for `patience` epochs: stop

    left_s = None if budget_s is None else max(budget_s - (clock() - chunk_start), 0.0)
    reserve_s = job.get("validation_s", 0.0) + job.get("checkpoint_s", CHECKPOINT_GUESS_S)
    dataset = ReviewedDataset(train_set, labels)
    if job.get("replay"):
        replayed = ReviewedDataset(_samples(job["replay"]), labels, known=job.get("base_labels", labels))
        dataset = torch.utils.data.ConcatDataset([dataset, replayed])
    try:
        result = train(model, dataset, train_config, detector.preprocess, labels, branch=branch,
                       progress=progress, cancel=cancel, epoch_end=validate, budget_s=left_s, reserve_s=reserve_s,
                       clock=clock, distill=distill)
    finally:
        if distill is not None:
            distill.release()
    if result.checkpoint_s:
        job["checkpoint_s"] = round(max(job.get("checkpoint_s", 0.0), result.checkpoint_s), 3)
    model.eval()
    if result.status in DONE and (
            not job["history"] or job["history"][-1]["epoch"] != result.epoch or job["best"]["epoch"] < 0):
        validate(result.epoch)  # a run capped by max_steps ends mid-epoch: score where it stopped
    job["steps"] = result.step
    job["seconds"] += time.perf_counter() - started
    job["status"] = result.status
    write_json(work_dir / JOB_FILE, job)
    return result.status


def _best_detector(job: dict, work_dir: Path, device: str | None = None) -> Detector:
    detector = _job_detector(job, device)
    detector.model.load_state_dict(load_file(work_dir / BEST_FILE))
    detector.model.config.auxiliary_loss = False
    detector.model.eval()
    return detector


def score_best(work_dir: Path) -> dict:
    """The job's best epoch scored on the validation split at each of `FinetuneConfig.inference_scales`
    of the training size, each without and with duplicate removal (`FinetuneConfig.duplicate_iou`) and
    then without and with the test-time flip (`FinetuneConfig.test_time_flip`), each kept as
    `training.choices.keeps` says; one forward pass per size (and one of the mirrored images) is scored
    every way. Returns ``{"size": the chosen shortest edge, "duplicate_iou": the removal chosen or None,
    "test_time_flip": bool, "metrics": its `Metrics` as a dict, "scores": {size: AP as chosen},
    "duplicates": {size: {"kept": AP, "removed": AP}}, "flips": {size: {"plain": AP, "flipped": AP}}}``.
    Reads only files: on ZeroGPU it runs in the GPU worker, and `finish` writes the version in the main
    process."""
    work_dir = Path(work_dir)
    job = read_job(work_dir)
    config, detector, val = job_config(job), _best_detector(job, work_dir), _samples(job["val"])
    sizes = sorted({max(32, round(job["size"] * scale)) for scale in config.inference_scales or (1.0,)})
    truths, removal, labels = [s.truth for s in val], config.duplicate_iou or None, job["labels"]
    images = [load_image(s.filepath) for s in val]
    mirrors = [mirrored(image) for image in images] if config.test_time_flip else []
    chosen: dict[int, tuple[Metrics, float | None, bool]] = {}  # size -> (validation metrics, removal, flip) as chosen
    duplicates, flips = {}, {}
    for size in sizes:
        resize = {"shortest_edge": size, "longest_edge": longest_edge(job, size)}
        outputs = predict(detector, images, **resize)
        metrics, kept_removal = score_outputs(outputs, truths, labels), None
        if removal:
            deduplicated = score_outputs([replace(out, duplicate_iou=removal) for out in outputs], truths, labels)
            duplicates[str(size)] = {"kept": round(metrics.AP, 4), "removed": round(deduplicated.AP, 4)}
            if keeps(metrics.AP, deduplicated.AP, config.tolerance):
                metrics, kept_removal = deduplicated, removal
        flip = False
        if config.test_time_flip:
            mirror = predict(detector, mirrors, **resize)
            fused = [replace(flip_fused(out, other), duplicate_iou=kept_removal) for out, other in zip(outputs, mirror)]
            flipped = score_outputs(fused, truths, labels)
            flips[str(size)] = {"plain": round(metrics.AP, 4), "flipped": round(flipped.AP, 4)}
            if keeps(metrics.AP, flipped.AP, config.tolerance):
                metrics, flip = flipped, True
        chosen[size] = (metrics, kept_removal, flip)
    size = inference_size({size: metrics.AP for size, (metrics, _, _) in chosen.items()}, config.tolerance)
    metrics, duplicate_iou, flip = chosen[size]
    return {"size": size, "duplicate_iou": duplicate_iou, "test_time_flip": flip, "metrics": asdict(metrics),
            "scores": {str(s): round(m.AP, 4) for s, (m, _, _) in chosen.items()}, "duplicates": duplicates,
            "flips": flips}


def finish(work_dir: Path, registry: Registry | None = None, out_dir: Path | None = None,
           after: dict | None = None) -> FinetuneResult:
    """Write the job's best epoch as a new registry version (or to ``out_dir``) at the inference size
    with the duplicate removal and test-time flip `score_best` chose, with its validation metrics
    (``after``, from `score_best`; scored here when not given)."""
    work_dir = Path(work_dir)
    job = read_job(work_dir)
    if job["status"] == "registered":
        raise FinetuneError(f"the fine-tune in {work_dir} was already written as {job.get('version')}.")
    if job["status"] not in DONE:
        raise FinetuneError(f"the fine-tune in {work_dir} has not finished (status {job['status']!r}); "
                            "continue it first.")
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FinetuneError(f"{out_dir} is not empty; choose a new folder so nothing is overwritten.")
    config, labels = job_config(job), job["labels"]
    scored = after if after is not None else score_best(work_dir)
    after, size = Metrics(**scored["metrics"]), int(scored["size"])
    longest = longest_edge(job, size)
    best = _best_detector(job, work_dir, device="cpu")  # only saved from here
    model, base_preprocess = best.model, best.preprocess
    duplicate_iou = scored.get("duplicate_iou")
    if duplicate_iou:
        model.config.duplicate_iou = duplicate_iou  # config.json: every loader of the version removes them
    elif hasattr(model.config, "duplicate_iou"):  # a base version's removal, not chosen for this one
        del model.config.duplicate_iou
    flip = bool(scored.get("test_time_flip"))
    if flip:
        model.config.test_time_flip = True  # config.json: every loader of the version runs the mirror too
    elif hasattr(model.config, "test_time_flip"):
        del model.config.test_time_flip
    train_set, val_set = _samples(job["train"]), _samples(job["val"])
    before = Metrics(**job["before"])
    outcome = FinetuneResult(status=job["status"], labels=labels, before=before, after=after,
                             best_epoch=job["best"]["epoch"], history=job["history"],
                             train_ids=[s.sample_id for s in train_set], val_ids=[s.sample_id for s in val_set],
                             seconds=job["seconds"], forgotten=forgotten_classes(before, after,
                                                                                 job.get("base_labels", labels)),
                             inference_size=size, duplicate_iou=duplicate_iou or None, test_time_flip=flip)
    info = {
        "parent": job["base"], "labels": labels, "kind": job["kind"], "dataset": job["dataset"], "status": job["status"],
        "steps": job["steps"], "best_epoch": job["best"]["epoch"], "seconds": round(job["seconds"], 1),
        "settings": asdict(config), "history": job["history"],
        "metrics": {"before": asdict(before), "after": asdict(after)},
        # shown before anyone switches to the version: old classes it got worse at
        "forgetting": {"limit": FORGETTING_LIMIT, "classes": outcome.forgotten},
        # the shortest edge the version runs at, chosen on the validation split (AP at each size tried)
        "inference_size": {"shortest_edge": size, "longest_edge": longest, "validation_ap": scored["scores"]},
        # class-wise duplicate removal (config.json's duplicate_iou) and the test-time flip (config.json's
        # test_time_flip), each kept unless validation AP was lower with it by more than the tolerance
        "duplicates": {"iou": duplicate_iou or None, "validation_ap": scored.get("duplicates", {})},
        "test_time_flip": {"on": flip, "validation_ap": scored.get("flips", {})},
        "split": {"rule": RULE, "val_fraction": config.val_fraction},
        "train_ids": outcome.train_ids, "val_ids": outcome.val_ids,
        "replay_ids": [r["sample_id"] for r in job.get("replay", [])],
    }

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        processor = Path(job["base_dir"]) / "preprocessor_config.json"
        document = json.loads(processor.read_text()) if processor.is_file() else {
            "image_mean": list(base_preprocess.image_mean), "image_std": list(base_preprocess.image_std)}
        document["size"] = {"shortest_edge": size, "longest_edge": longest}
        (directory / "preprocessor_config.json").write_text(json.dumps(document, indent=1))

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write(out_dir)
        (out_dir / "version.json").write_text(json.dumps(info, indent=1))
        outcome.out_dir = out_dir
    else:
        outcome.version = registry.add(write, info).name
    job["status"], job["version"] = "registered", outcome.version or str(out_dir)
    write_json(work_dir / JOB_FILE, job)
    shutil.rmtree(work_dir / CHECKPOINTS, ignore_errors=True)  # the version holds the weights now
    return outcome


def unfinished_job(work_dir: Path) -> dict | None:
    """The job in ``work_dir`` if one was started, not cancelled, and not yet written as a version
    (training interrupted, or interrupted while writing the version)."""
    path = Path(work_dir) / JOB_FILE
    if not path.is_file():
        return None
    job = json.loads(path.read_text())
    return None if job["status"] in ("registered", "cancelled") else job


def run_here(fn: Callable, *args, duration_s: float | None = None, **kwargs):
    """Run ``fn`` in this process (the `GpuCall` off ZeroGPU; the app passes one that runs it in
    ``@spaces.GPU`` with ``duration_s``)."""
    return fn(*args, **kwargs)


GpuCall = Callable[..., object]  # on_gpu(fn, *args, duration_s=..., **kwargs) -> fn(*args, **kwargs)
SCORING_S = 60  # what scoring a validation split may take on a GPU (a ZeroGPU call's duration)


def continue_job(
    work_dir: Path,
    registry: Registry | None = None,
    out_dir: Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
    chunk_s: float | None = None,
    run: Callable[..., str] = run_chunk,
    clock: Callable[[], float] = time.monotonic,
    on_gpu: GpuCall = run_here,
) -> FinetuneResult:
    """Run the prepared (or interrupted) job in ``work_dir`` chunk by chunk to the end, then `finish`.

    With ``chunk_s`` each chunk trains at most that long (a ZeroGPU call's slice) and the next
    continues from its checkpoint; ``run`` is the chunk runner (on ZeroGPU the app passes one that
    runs `run_chunk` inside ``spaces.GPU`` and retries a failed chunk). ``on_gpu`` runs the scoring
    of the best epoch (`score_best`). After a restart this picks the job up from its last checkpoint.
    """
    status = "paused"
    while status == "paused":
        status = run(work_dir, progress=progress, on_epoch=on_epoch, cancel=cancel, budget_s=chunk_s, clock=clock)
    if status == "cancelled":
        job = read_job(work_dir)
        return FinetuneResult(status="cancelled", labels=job["labels"], before=Metrics(**job["before"]),
                              after=None, best_epoch=job["best"]["epoch"], history=job["history"],
                              train_ids=[r["sample_id"] for r in job["train"]],
                              val_ids=[r["sample_id"] for r in job["val"]], seconds=job["seconds"])
    after = None if read_job(work_dir)["status"] == "registered" else on_gpu(score_best, str(work_dir),
                                                                              duration_s=SCORING_S)
    return finish(work_dir, registry, out_dir, after=after)

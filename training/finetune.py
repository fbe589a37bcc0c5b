"""Fine-tune a detector on the reviewed samples of a FiftyOne dataset and register a new version.

    python -m training.finetune --dataset NAME [--base MODEL] [--epochs N] [--out DIR] [--data-dir DIR]

It trains on the samples tagged ``reviewed`` (field ``ground_truth``) of any FiftyOne dataset,
reached as the app reaches its store (``FIFTYONE_DATABASE_URI``, else the data directory):

- split: a sample is in validation when the SHA-256 of its id falls in the first ``val_fraction``
  of the hash range, so the split is stable as reviews are added and never trained on;
- labels: the base model's, then class names reviewers typed; new classes extend the
  classification head, existing rows keep their weights, classes without examples stay;
- training: the `core.train` loop (GPU with bf16 when present), flips and scale jitter, early
  stopping on validation AP (COCO, `core.evaluate`) with the best epoch kept;
- output: a new version in the registry (`training.registry`) with before/after metrics, the
  sample ids and the settings, or with ``--out DIR`` a `save_pretrained` directory.

``accelerate launch -m training.finetune ...`` trains on several GPUs (validation runs on each).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.boxes import box_xywhn_to_xyxy, box_xyxy_to_cxcywh, box_xyxy_to_xywh
from core.evaluate import Metrics, coco_metrics, to_coco_results
from core.images import load_image
from core.inference import predict
from core.loading import Detector, load_detector_or_bundled
from core.hybrid import hybrid_setting_problem
from core.train import TRAINABLE, Progress, TrainConfig, train
from training.registry import PREFIX, Registry

logger = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; defaults chosen for tens to hundreds of reviewed images (see README)."""

    epochs: int = 150  # upper bound; early stopping may end sooner
    batch_size: int = 8
    # What trains: "heads" (class and box heads), "decoder", "transformer" or "all". With tens of
    # reviewed images, the heads alone learned a new class best and forgot least (README: star check).
    trainable: str = "heads"
    lr: float = 3e-3  # outside the backbone; 3e-3 suits "heads", about 2e-4 suits "all"
    lr_backbone: float = 2e-5
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    schedule: str = "cosine"
    hflip: float = 0.5
    patience: int = 40  # epochs without a better validation AP before stopping
    one_to_many: int = 0  # H-DETR hybrid matching: repeat targets this often for early decoder layers
    one_to_many_layers: int = 0  # how many early layers use it (the bundled model was trained with 5 / 2)
    # One-to-many training branches, dropped when training ends (core.hybrid): "off", "co-detr"
    # (ATSS head + positive queries) or "h-detr" (a one-to-many query group); not with trainable "heads".
    hybrid: str = "off"
    anchor_scale: float = 8.0  # co-detr: anchor side in strides (ATSS: 8); 4 suits small objects such as the shapes
    val_fraction: float = 0.2
    shortest_edge: int = 0  # 0: the base model's own
    max_steps: int = 0  # 0: no cap (quick checks set one)
    seed: int = 0


# Learning rates that worked for each choice of what trains (star check, README); the Train tab
# proposes them when the choice changes.
SUGGESTED_LR = {"heads": 3e-3, "decoder": 5e-4, "transformer": 2e-4, "all": 2e-4}


class FinetuneError(ValueError):
    """Fine-tuning cannot start (too few reviewed samples, bad labels); the message says what to do."""


@dataclass
class Reviewed:
    """One reviewed sample: its image path and truth in pixels."""

    sample_id: str
    filepath: str
    boxes: np.ndarray  # [N, 4] xyxy pixels
    names: list[str]
    width: int
    height: int


@dataclass
class FinetuneResult:
    status: str  # "finished", "stopped_early", "cancelled"
    labels: list[str]
    before: Metrics | None
    after: Metrics | None
    best_epoch: int
    history: list[dict] = field(default_factory=list)  # per epoch: epoch, step, val AP
    version: str | None = None  # the registry version, or None when cancelled / --out
    out_dir: Path | None = None
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _hash_position(sample_id: str) -> float:
    """Where ``sample_id`` falls in [0, 1): the first 32 bits of its SHA-256."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 2**32


def is_validation(sample_id: str, fraction: float) -> bool:
    """Stable split: the same id is always on the same side, whatever else is in the dataset.

    >>> is_validation("6b01be74926933e4180648e3", 0.2) == is_validation("6b01be74926933e4180648e3", 0.2)
    True
    """
    return _hash_position(sample_id) < fraction


def _name(view) -> str:
    return view.dataset_name if hasattr(view, "dataset_name") else view.name


def reviewed_samples(view) -> list[Reviewed]:
    """The samples of ``view`` tagged ``reviewed`` that have a ``ground_truth`` field."""
    if "ground_truth" not in view.get_field_schema():
        raise FinetuneError(f"dataset {_name(view)!r} has no 'ground_truth' field; review some images first.")
    samples = []
    for sample in view.match_tags("reviewed").select_fields(["ground_truth", "metadata"]):
        if sample.metadata is None or not sample.metadata.width:
            sample.compute_metadata()
        width, height = sample.metadata.width, sample.metadata.height
        items = sample.ground_truth.detections if sample.ground_truth is not None else []
        boxes = box_xywhn_to_xyxy(np.array([d.bounding_box for d in items], dtype=np.float64).reshape(-1, 4),
                                  width, height)
        samples.append(Reviewed(str(sample.id), sample.filepath, boxes, [d.label for d in items], width, height))
    return samples


def extend_head(model: nn.Module, kind: str, labels: list[str]) -> None:
    """Grow the classification head to ``labels`` (old labels first, in order); old rows keep their
    weights, DETR's no-object row stays last. New rows start like a fresh head's."""
    old = model.config.num_labels
    added = len(labels) - old
    if added < 0 or [model.config.id2label[i] for i in range(old)] != labels[:old]:
        raise FinetuneError("the new label list must start with the base model's labels, in order.")
    if added:
        layer = model.class_labels_classifier
        extra = 1 if kind == "detr" else 0  # DETR's last output is "no object"
        grown = nn.Linear(layer.in_features, len(labels) + extra).to(layer.weight.device, layer.weight.dtype)
        with torch.no_grad():
            grown.weight.normal_(0, 0.01)
            grown.weight[:old] = layer.weight[:old]
            grown.bias[:old] = layer.bias[:old]
            if kind == "detr":
                grown.weight[-1], grown.bias[-1] = layer.weight[-1], layer.bias[-1]
                grown.bias[old:-1] = layer.bias[:old].min()  # start as unlikely as the least likely class
            else:
                grown.bias[old:] = -float(np.log((1 - 0.01) / 0.01))  # focal-loss prior: p = 0.01
        model.class_labels_classifier = grown
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.num_labels = len(labels)


class ReviewedDataset(torch.utils.data.Dataset):
    """``(image, target)`` pairs in the transformers contract; images decoded on first use and kept."""

    def __init__(self, samples: list[Reviewed], labels: list[str]):
        self.samples, self.labels = samples, labels
        self._images: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        if index not in self._images:
            self._images[index] = np.asarray(load_image(sample.filepath))
        scale = torch.tensor([sample.width, sample.height] * 2, dtype=torch.float32)
        boxes = box_xyxy_to_cxcywh(torch.from_numpy(sample.boxes).float()) / scale
        classes = torch.tensor([self.labels.index(name) for name in sample.names], dtype=torch.long)
        return self._images[index], {"class_labels": classes, "boxes": boxes.reshape(-1, 4)}


def coco_truth(samples: list[Reviewed], labels: list[str]) -> dict:
    """A COCO document of ``samples`` (image ids = positions, category ids from 1 in label order)."""
    images, annotations = [], []
    for image_id, sample in enumerate(samples, 1):
        images.append({"id": image_id, "file_name": sample.filepath, "width": sample.width, "height": sample.height})
        for box, name in zip(box_xyxy_to_xywh(sample.boxes), sample.names):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": labels.index(name) + 1,
                                "bbox": [float(v) for v in box], "iscrowd": 0, "area": float(box[2] * box[3])})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(labels)]}


def evaluate_on(detector: Detector, samples: list[Reviewed], labels: list[str], shortest_edge: int | None = None
                ) -> Metrics:
    """COCO AP of ``detector`` on ``samples`` with ``labels`` as categories (core evaluation)."""
    document = coco_truth(samples, labels)
    category = {name: i + 1 for i, name in enumerate(labels)}
    results = []
    outputs = predict(detector, [s.filepath for s in samples], shortest_edge=shortest_edge)
    for image_id, out in enumerate(outputs, 1):
        results.extend(to_coco_results(image_id, out, category))
    return coco_metrics(document, results)


def resolve_base(base: str, registry: Registry | None) -> tuple[Detector, Path]:
    """Load the base model (hub id, directory, ``bundled`` or ``version:vNNNN``) and its directory."""
    if base.startswith(PREFIX):
        if registry is None:
            raise FinetuneError(f"{base} names a registry version, but no registry (data directory) is in use.")
        path = registry.get(base).path
        return load_detector_or_bundled(path), path
    detector = load_detector_or_bundled(base)
    return detector, detector.source


JOB_FILE, BEST_FILE, CHECKPOINTS = "job.json", "best.safetensors", "checkpoints"


def _write_json(path: Path, document: dict) -> None:
    """Write ``document`` atomically: a reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


def _samples_from(records: list[dict]) -> list[Reviewed]:
    return [Reviewed(**{**r, "boxes": np.asarray(r["boxes"], dtype=np.float64).reshape(-1, 4)}) for r in records]


def prepare(view, base: str, config: FinetuneConfig, work_dir: Path, registry: Registry | None = None) -> dict:
    """Start a job in ``work_dir`` (emptied first): read the reviewed samples, split them, score the
    base model on the validation part, and write ``job.json``. Runs where the database is (on a
    ZeroGPU Space: the main process); the chunks only need the job file and the images.

    Raises `FinetuneError` before anything is written when the data cannot work.
    """
    samples = reviewed_samples(view)
    val_ids = {s.sample_id for s in samples if is_validation(s.sample_id, config.val_fraction)}
    if not val_ids and len(samples) >= 5:  # small sets: the sample lowest in the hash order validates
        val_ids = {min((s.sample_id for s in samples), key=_hash_position)}
    train_set = [s for s in samples if s.sample_id not in val_ids]
    val_set = [s for s in samples if s.sample_id in val_ids]
    if len(train_set) < 2 or not val_set:
        raise FinetuneError(
            f"{len(samples)} reviewed samples give {len(train_set)} for training and {len(val_set)} for "
            "validation; review more images (about 10 at least) and try again."
        )
    if config.trainable not in TRAINABLE:
        raise FinetuneError(f"trainable must be one of {', '.join(TRAINABLE)}; got {config.trainable!r}.")
    if problem := hybrid_setting_problem(config.hybrid, config.trainable):
        raise FinetuneError(problem)
    detector, base_dir = resolve_base(base, registry)
    reviewed_names = [name for s in samples for name in s.names]
    labels = list(detector.labels) + [name for name in dict.fromkeys(reviewed_names) if name not in detector.labels]
    size = config.shortest_edge or detector.preprocess.shortest_edge
    longest = max(size, round(size * detector.preprocess.longest_edge / detector.preprocess.shortest_edge))
    detector.model.eval()
    before = evaluate_on(detector, val_set, labels, size)
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    job = {
        "base": base, "base_dir": str(base_dir), "kind": detector.kind, "dataset": _name(view), "labels": labels,
        "size": size, "longest": longest,
        "config": asdict(config), "before": asdict(before), "history": [], "best": {"ap": -1.0, "epoch": -1},
        "status": "prepared", "steps": 0, "seconds": 0.0,
        "train": [{**asdict(s), "boxes": s.boxes.tolist()} for s in train_set],
        "val": [{**asdict(s), "boxes": s.boxes.tolist()} for s in val_set],
    }
    _write_json(work_dir / JOB_FILE, job)
    return job


def _job_detector(job: dict) -> Detector:
    """The job's base model with its head grown to the job's labels (new rows seeded alike every time)."""
    detector = load_detector_or_bundled(job["base_dir"])
    torch.manual_seed(job["config"]["seed"])
    extend_head(detector.model, detector.kind, job["labels"])
    detector.labels = job["labels"]
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
    """
    started = time.perf_counter()
    work_dir = Path(work_dir)
    job = json.loads((work_dir / JOB_FILE).read_text())
    if job["status"] in ("finished", "stopped_early"):
        return job["status"]
    config = FinetuneConfig(**job["config"])
    labels, size = job["labels"], job["size"]
    detector = _job_detector(job)
    model = detector.model
    train_set, val_set = _samples_from(job["train"]), _samples_from(job["val"])
    train_config = TrainConfig(
        epochs=config.epochs, max_steps=config.max_steps or None, batch_size=config.batch_size, lr=config.lr,
        lr_backbone=config.lr_backbone, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
        schedule=config.schedule, shortest_edge=size, longest_edge=job["longest"], hflip=config.hflip,
        trainable=config.trainable, one_to_many=config.one_to_many, one_to_many_layers=config.one_to_many_layers,
        hybrid=config.hybrid, co_detr_anchor_scale=config.anchor_scale,
        scale_jitter=(0.875, 1.0, 1.125), seed=config.seed, log_every=5, resume=True,
        checkpoint_dir=str(work_dir / CHECKPOINTS),
    )

    def validate(epoch: int) -> bool:
        metrics = evaluate_on(detector, val_set, labels, size)
        # a chunk that ended between an epoch's validation and the next checkpoint repeats that epoch
        job["history"] = [h for h in job["history"] if h["epoch"] != epoch] + [{"epoch": epoch, "val_AP": metrics.AP}]
        if on_epoch is not None:
            on_epoch(job["history"][-1])
        if metrics.AP > job["best"]["ap"]:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, work_dir / BEST_FILE)
            job["best"] = {"ap": metrics.AP, "epoch": epoch}
        _write_json(work_dir / JOB_FILE, job)
        return epoch - job["best"]["epoch"] >= config.patience  # no better epoch for `patience` epochs: stop

    result = train(model, detector.kind, ReviewedDataset(train_set, labels), train_config, detector.preprocess, labels,
                   progress=progress, cancel=cancel, epoch_end=validate, budget_s=budget_s, clock=clock)
    model.eval()
    if result.status in ("finished", "stopped_early") and (
            not job["history"] or job["history"][-1]["epoch"] != result.epoch or job["best"]["epoch"] < 0):
        validate(result.epoch)  # a run capped by max_steps ends mid-epoch: score where it stopped
    job["steps"] = result.step
    job["seconds"] += time.perf_counter() - started
    job["status"] = result.status
    _write_json(work_dir / JOB_FILE, job)
    return result.status


def finish(work_dir: Path, registry: Registry | None = None, out_dir: Path | None = None) -> FinetuneResult:
    """Score the job's best epoch and write it as a new registry version (or to ``out_dir``)."""
    work_dir = Path(work_dir)
    job = json.loads((work_dir / JOB_FILE).read_text())
    if job["status"] == "registered":
        raise FinetuneError(f"the fine-tune in {work_dir} was already written as {job.get('version')}.")
    if job["status"] not in ("finished", "stopped_early"):
        raise FinetuneError(f"the fine-tune in {work_dir} has not finished (status {job['status']!r}); "
                            "continue it first.")
    if out_dir is not None:
        out_dir = Path(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            raise FinetuneError(f"{out_dir} is not empty; choose a new folder so nothing is overwritten.")
    config, labels = FinetuneConfig(**job["config"]), job["labels"]
    detector = _job_detector(job)
    model = detector.model
    model.load_state_dict(load_file(work_dir / BEST_FILE))
    model.config.auxiliary_loss = False
    model.eval()
    train_set, val_set = _samples_from(job["train"]), _samples_from(job["val"])
    before = Metrics(**job["before"])
    after = evaluate_on(detector, val_set, labels, job["size"])
    outcome = FinetuneResult(status=job["status"], labels=labels, before=before, after=after,
                             best_epoch=job["best"]["epoch"], history=job["history"],
                             train_ids=[s.sample_id for s in train_set], val_ids=[s.sample_id for s in val_set],
                             seconds=job["seconds"])
    info = {
        "parent": job["base"], "labels": labels, "kind": job["kind"], "dataset": job["dataset"], "status": job["status"],
        "steps": job["steps"], "best_epoch": job["best"]["epoch"], "seconds": round(job["seconds"], 1),
        "settings": asdict(config), "history": job["history"],
        "metrics": {"before": asdict(before), "after": asdict(after)},
        "split": {"rule": "sha256(sample id)[:8] / 2**32 < val_fraction", "val_fraction": config.val_fraction},
        "train_ids": outcome.train_ids, "val_ids": outcome.val_ids,
    }

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        processor = Path(job["base_dir"]) / "preprocessor_config.json"
        if processor.is_file():
            (directory / "preprocessor_config.json").write_text(processor.read_text())

    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write(out_dir)
        (out_dir / "version.json").write_text(json.dumps(info, indent=1))
        outcome.out_dir = out_dir
    else:
        outcome.version = registry.add(write, info).name
    job["status"], job["version"] = "registered", outcome.version or str(out_dir)
    _write_json(work_dir / JOB_FILE, job)
    shutil.rmtree(work_dir / CHECKPOINTS, ignore_errors=True)  # the version holds the weights now
    return outcome


def finetune(
    view,
    base: str,
    config: FinetuneConfig,
    registry: Registry | None = None,
    out_dir: Path | None = None,
    work_dir: Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
    chunk_s: float | None = None,
    run: Callable[..., str] = run_chunk,
    clock: Callable[[], float] = time.monotonic,
) -> FinetuneResult:
    """Fine-tune ``base`` on the reviewed samples of ``view``; register the result (or write ``out_dir``).

    `prepare`, then `run_chunk` until done, then `finish`. With ``chunk_s`` each chunk trains at
    most that long (a ZeroGPU call's slice) and the next continues from its checkpoint; ``run``
    is the chunk runner (the Train tab passes `run_chunk` wrapped in ``spaces.GPU``). ``on_epoch``
    gets ``{"epoch", "val_AP"}`` after each epoch's validation, for a live plot. Raises
    `FinetuneError` before any training when the data cannot work.
    """
    if registry is None and out_dir is None:
        raise FinetuneError("give a registry or an output directory for the new model.")
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="finetune-"))) / "job"
        prepare(view, base, config, Path(work_dir), registry)
        return continue_job(work_dir, registry, out_dir, progress, on_epoch, cancel, chunk_s, run, clock)


def unfinished_job(work_dir: Path) -> dict | None:
    """The job in ``work_dir`` if one was started, not cancelled, and not yet written as a version
    (training interrupted, or interrupted while writing the version)."""
    path = Path(work_dir) / JOB_FILE
    if not path.is_file():
        return None
    job = json.loads(path.read_text())
    return None if job["status"] in ("registered", "cancelled") else job


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
) -> FinetuneResult:
    """Run the prepared (or interrupted) job in ``work_dir`` chunk by chunk to the end, then `finish`.

    After a restart this picks the job up from its last checkpoint (a Space restart, a crash).
    """
    status = "paused"
    while status == "paused":
        status = run(work_dir, progress=progress, on_epoch=on_epoch, cancel=cancel, budget_s=chunk_s, clock=clock)
    if status == "cancelled":
        job = json.loads((Path(work_dir) / JOB_FILE).read_text())
        return FinetuneResult(status="cancelled", labels=job["labels"], before=Metrics(**job["before"]),
                              after=None, best_epoch=job["best"]["epoch"], history=job["history"],
                              train_ids=[r["sample_id"] for r in job["train"]],
                              val_ids=[r["sample_id"] for r in job["val"]], seconds=job["seconds"])
    return finish(work_dir, registry, out_dir)


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


def _flag_value(kind: type):
    if kind is bool:
        return lambda text: {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
    return kind


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `FinetuneConfig` field, with its default and type (STYLE: flags from the dataclass)."""
    for item in fields(FinetuneConfig):
        flag = "--" + item.name.replace("_", "-")
        parser.add_argument(flag, type=_flag_value(type(item.default)), default=item.default,
                            help=f"default {item.default}")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The `FinetuneConfig` that `add_config_flags` flags describe."""
    return FinetuneConfig(**{item.name: getattr(args, item.name) for item in fields(FinetuneConfig)})


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from datasets.review import ReviewError, configure_for_dataset

    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="FiftyOne dataset with samples tagged 'reviewed'")
    parser.add_argument("--base", default="bundled", help="hub id, directory, 'bundled' or version:vNNNN")
    parser.add_argument("--out", type=Path, default=None, help="write save_pretrained here instead of the registry")
    parser.add_argument("--data-dir", type=Path, default=None, help="app data directory (default as the app)")
    add_config_flags(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        data_dir = configure_for_dataset(args.dataset, args.data_dir)
    except ReviewError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import fiftyone as fo

    config = config_from_args(args)
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
          f"{len(result.train_ids)} training and {len(result.val_ids)} validation samples")
    print(f"{'class':<14}{'AP before':>10}{'AP after':>10}{'change':>8}")
    for name, before, after, change in per_class_table(result):
        print(f"{name:<14}{before!s:>10}{after!s:>10}{change!s:>8}")
    print(f"saved: {result.version or result.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

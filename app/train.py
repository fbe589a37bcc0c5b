"""The Train tab's handlers: one-click fine-tuning on the reviewed samples, and the model versions.

One job at a time per server: a second start while one runs is refused. The job runs in a worker
thread; the handler streams its progress (a generator), and Cancel sets the job's flag, which the
training loop checks before every step. On ZeroGPU the job's tensor work runs in ``@spaces.GPU``
chunks (`app.gpu`), in the starting user's context.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import gradio as gr
import matplotlib.pyplot as plt

from core.flags import with_flags
from core.train import FROZEN_TRUNK
from datasets.review import reviewed_samples
from training.choices import FORGETTING_LIMIT
from training.config import FinetuneConfig
from training.finetune import config_problem, finetune, per_class_table
from training.job import FinetuneError, continue_job, unfinished_job
from training.registry import RegistryError

if TYPE_CHECKING:
    from app.state import AppState, Job

VERSION_HEADERS = ["version", "parent", "created", "val AP before", "val AP after", "forgetting", "labels", "samples"]


def training_summary(state: AppState) -> str:
    """What a fine-tune would train on: reviewed samples and classes."""
    store = state.store
    samples = reviewed_samples(store.dataset) if len(store.reviewed_view()) else []
    counts = Counter(str(name) for s in samples for name in s.truth.data["class_name"])
    classes = ", ".join(f"{name} ({n})" for name, n in counts.most_common()) or "none"
    text = f"**{len(samples)} reviewed samples** in `{store.dataset.name}`; boxes per class: {classes}."
    if state.config.public_space_without_login:
        text += ("\n\nFine-tuning is disabled on this public Space: it has no login configured, so anyone could "
                 "start jobs. Duplicate the Space (or run it locally) to fine-tune.")
    if (job := state.job.current) is not None:
        text += (f"\n\nA fine-tune of `{job.base}` is running (started {(time.time() - job.started) / 60:.0f} min "
                 "ago); its version appears in the list below when it finishes.")
    return text


def _plot(history: list[dict], losses: list[tuple[int, float]]):
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    if losses:
        left.plot([s for s, _ in losses], [v for _, v in losses])
    left.set_title("training loss", fontsize=9)
    left.set_xlabel("step")
    if history:
        right.plot([h["epoch"] for h in history], [h["val_AP"] for h in history], marker="o")
    right.set_title("validation AP", fontsize=9)
    right.set_xlabel("epoch")
    figure.tight_layout()
    return figure


def _running(state: AppState, job: Job) -> dict:
    """How the job runs: callbacks into the job's event queue, and where its tensor work goes (`app.gpu`)."""
    run, chunk_s = state.gpu.chunk_runner(notify=lambda message: job.events.put(("note", message)))
    return {"progress": lambda p: job.events.put(("progress", p)), "on_epoch": lambda h: job.events.put(("epoch", h)),
            "cancel": job.cancel, "run": run, "chunk_s": chunk_s, "on_gpu": state.gpu.call}


def continue_unfinished(state: AppState) -> str | None:
    """At start-up, continue in the background a fine-tune that a restart interrupted (its job
    folder and checkpoints are under the data directory). Returns the job's base model, or None.
    Called after `launch` (on ZeroGPU `spaces` starts up there); with no visitor behind it, a
    resumed job's ZeroGPU time is the Space's own."""
    pending = unfinished_job(state.work_dir)
    if pending is None:
        return None
    state.job.start(pending["base"], lambda job: continue_job(state.work_dir, state.registry, **_running(state, job)))
    return pending["base"]


DEFAULTS = FinetuneConfig()


def start_finetune(state: AppState, base: str, epochs: int, lr: float, trainable: str = DEFAULTS.train.trainable,
                   hybrid: str = DEFAULTS.hybrid.method):
    """Run a fine-tune of ``base`` on the reviewed samples; yields ``(status, plot, table, new model)``."""
    if state.config.public_space_without_login:
        raise gr.Error("Fine-tuning is disabled on a public Space without login.")
    config = with_flags(DEFAULTS, epochs=int(epochs), lr=float(lr), lr_backbone=float(lr) / 10, trainable=trainable,
                        hybrid=hybrid)
    if problem := config_problem(config):
        raise gr.Error(problem)
    store = state.store
    job = state.job.start(base, lambda job: finetune(store.dataset, base, config, registry=state.registry,
                                                     work_dir=state.work_dir, **_running(state, job)))
    history, losses, status = [], [], "Starting: evaluating the base model on the validation samples..."
    yield status, _plot(history, losses), [], gr.update()
    while True:
        kind, payload = job.events.get()
        if kind == "progress":
            losses.append((payload.step, payload.losses.get("loss", float("nan"))))
            status = (f"step {payload.step}/{payload.total_steps} · epoch {payload.epoch} · "
                      f"{payload.images_per_s:.1f} images/s · about {payload.eta_s / 60:.1f} min left (at most)")
        elif kind == "epoch":
            history.append(payload)
        elif kind == "note":  # on ZeroGPU: a chunk ended, or failed and is tried again
            status = payload
        elif kind == "error":
            message = str(payload) if isinstance(payload, (FinetuneError, RegistryError, ValueError, RuntimeError)) \
                else repr(payload)
            raise gr.Error(f"Fine-tuning failed: {message}. No model version was written.")
        elif kind == "done":
            result = payload
            if result.status == "cancelled":
                yield "Cancelled; no model version was written.", _plot(history, losses), [], gr.update()
                return
            status = (f"**{result.version}** saved ({result.status}, best epoch {result.best_epoch}, "
                      f"{result.seconds / 60:.1f} min). Validation AP {result.before.AP:.3f} → {result.after.AP:.3f}, "
                      f"{result.choices_note}.")
            if result.forgotten:
                status += ("\n\n**Forgetting:** " + ", ".join(f"{name} {change:+.3f}" for name, change in
                                                             result.forgotten.items())
                           + f" in validation AP (more than {FORGETTING_LIMIT} down). Check these classes before "
                           "switching to this version; it is recorded in its version.json.")
            yield status, _plot(history, losses), per_class_table(result), gr.update(value=result.version)
            return
        yield status, _plot(history, losses), [], gr.update()


def trainable_for_hybrid(hybrid: str, trainable: str) -> str:
    """The Train tab's "What trains" after the one-to-many choice changes: hybrid training needs more
    than the heads (Co-DETR's ATSS head also the encoder), so those become "transformer"; any other
    choice stays."""
    if (hybrid != "off" and trainable in FROZEN_TRUNK) or (hybrid == "co-detr" and trainable == "decoder"):
        return "transformer"
    return trainable


def cancel_finetune(state: AppState) -> str:
    if not state.job.cancel():
        return "No fine-tune is running."
    return "Cancelling: the job stops before its next step."


def versions_table(state: AppState) -> list[list]:
    rows = []
    for version in reversed(state.registry.versions()):
        info = version.info
        metrics = info.get("metrics", {})
        rows.append([version.name, info.get("parent", ""), info.get("created", ""),
                     round(metrics.get("before", {}).get("AP", float("nan")), 3),
                     round(metrics.get("after", {}).get("AP", float("nan")), 3),
                     ", ".join(f"{name} {change:+.3f}" for name, change in
                               info.get("forgetting", {}).get("classes", {}).items()),
                     ", ".join(info.get("labels", [])), len(info.get("train_ids", [])) + len(info.get("val_ids", []))])
    return rows


def rollback_target(state: AppState, version_name: str) -> str:
    """The model to switch to when rolling back from ``version_name``: its parent."""
    try:
        return state.registry.get(version_name).parent or "bundled"
    except RegistryError as error:
        raise gr.Error(str(error)) from None

"""The Train tab's handlers: summary, one job at a time, cancel, a finished run becomes a selectable version."""

from __future__ import annotations

import gradio as gr
import pytest

from app import train
from app.config import AppConfig
from app.state import AppState
from core.flags import with_flags
from training.config import FinetuneConfig
from training.star_check import build_review_dataset


def test_summary_counts_reviewed_samples_and_classes(state, review_store):
    assert "**0 reviewed samples**" in train.training_summary(state)
    build_review_dataset(review_store, 3)
    text = train.training_summary(state)
    assert "**3 reviewed samples**" in text and "star (2)" in text


def test_second_start_is_refused_and_cancel_stops_without_a_version(state, review_store):
    build_review_dataset(review_store, 10)
    first = train.start_finetune(state, "bundled", 50, 1e-4)
    status, *_ = next(first)  # the job is running from here on
    assert status.startswith("Starting")
    with pytest.raises(gr.Error, match="already running"):
        next(train.start_finetune(state, "bundled", 5, 1e-4))
    assert train.cancel_finetune(state).startswith("Cancelling")
    outputs = list(first)
    assert outputs[-1][0].startswith("Cancelled")
    assert state.registry.versions() == []
    assert train.cancel_finetune(state) == "No fine-tune is running."


def test_a_finished_run_is_a_version_the_app_can_load(state, review_store):
    build_review_dataset(review_store, 10)
    outputs = list(train.start_finetune(state, "bundled", 1, 1e-4))
    status, _, table, version = outputs[-1]
    assert "version:v0001" in status and version["value"] == "version:v0001"
    assert table[0][0] == "all classes" and [row[0] for row in table[1:]] == ["circle", "square", "triangle", "star"]
    assert "version:v0001" in state.model_choices()
    detector = state.models.get("version:v0001")
    assert detector.labels == ["circle", "square", "triangle", "star"] and detector.name == "version:v0001"
    assert train.versions_table(state)[0][0] == "version:v0001" and train.rollback_target(state, "version:v0001") == "bundled"


def test_public_space_without_login_cannot_train(review_store, tmp_path):
    state = AppState(AppConfig(system="spaces", space_id="someone/detr-studio", dataset=review_store.dataset.name), tmp_path / "space")
    assert "disabled" in train.training_summary(state)
    with pytest.raises(gr.Error, match="disabled"):
        next(train.start_finetune(state, "bundled", 1, 1e-4))


def test_chunked_runner_retries_a_failed_chunk_and_still_plots_epochs(state, review_store, monkeypatch):
    """The ZeroGPU chunk runner of `app.gpu` with its GPU call run in this process (the real `spaces`
    runs it in tests/test_zerogpu.py): 4 s chunks, the second call fails once and is tried again with
    the reason on the page, and the epochs each chunk validated reach the plot from the job file."""
    from app import gpu

    calls = []

    def flaky(fn, args, kwargs, duration_s):
        calls.append((fn.__name__, duration_s))
        if len(calls) == 3:  # prepare, chunk 1, then this chunk fails before it starts
            raise RuntimeError("No GPU was available")
        return gpu._in_worker(fn, args, kwargs, duration_s)

    monkeypatch.setattr(gpu, "RETRY_DELAY_S", 0.01)
    state.gpu = gpu.Gpu(gpu.Hardware("cpu"), state.models, chunk_s=4)
    state.gpu._on_gpu = flaky
    build_review_dataset(review_store, 10)
    outputs = list(train.start_finetune(state, "bundled", 3, 1e-3))
    status, _, table, version = outputs[-1]
    assert "version:v0001" in status
    chunks = [duration for name, duration in calls if name == "_timed_chunk"]
    assert [name for name, _ in calls][:1] == ["create_job"] and calls[-1][0] == "score_best"
    assert len(chunks) >= 3 and set(chunks) == {4}
    assert any("No GPU was available" in out[0] and "attempt 2 of 4" in out[0] for out in outputs)
    plotted = outputs[-1][1].axes[1].get_lines()[0].get_xdata()  # the validation-AP curve
    assert list(plotted) == [0, 1, 2]
    info = state.registry.get("version:v0001").info
    assert [h["epoch"] for h in info["history"]] == [0, 1, 2]
    job = (state.work_dir / "job.json").read_text()
    assert '"startup_s"' in job and '"validation_s"' in job  # measured, and kept free in the next chunk


def test_a_fine_tune_interrupted_by_a_restart_continues_at_start_up(state, review_store):
    """Chunks ran, then the server went away: the next start-up continues the job to a version."""
    import time

    from training.finetune import prepare
    from training.job import run_chunk, unfinished_job

    build_review_dataset(review_store, 10)
    work = state.work_dir
    prepare(review_store.dataset, "bundled", with_flags(FinetuneConfig(), epochs=3, batch_size=2), work, state.registry)
    ticks = iter(range(100_000))
    assert run_chunk(work, budget_s=3, clock=lambda: float(next(ticks))) == "paused"  # then the "restart"
    assert unfinished_job(work)["status"] == "paused"
    assert train.continue_unfinished(state) == "bundled"
    assert "is running" in train.training_summary(state)
    deadline = time.time() + 120
    while state.job.current is not None and time.time() < deadline:
        time.sleep(0.2)
    assert [v.name for v in state.registry.versions()] == ["version:v0001"]
    assert unfinished_job(work) is None and train.continue_unfinished(state) is None  # nothing left to continue


def test_a_cancelled_fine_tune_is_not_continued(state, review_store):
    import threading

    from training.finetune import prepare
    from training.job import run_chunk, unfinished_job

    build_review_dataset(review_store, 10)
    work = state.work_dir
    prepare(review_store.dataset, "bundled", with_flags(FinetuneConfig(), epochs=3, batch_size=2), work, state.registry)
    cancel = threading.Event()
    cancel.set()
    assert run_chunk(work, cancel=cancel) == "cancelled"
    assert unfinished_job(work) is None and train.continue_unfinished(state) is None


def test_one_to_many_choice_moves_what_trains_off_the_heads_and_is_checked(state, review_store):
    assert train.trainable_for_hybrid("co-detr", "heads") == "transformer"
    assert train.trainable_for_hybrid("h-detr", "decoder") == "decoder"
    assert train.trainable_for_hybrid("co-detr", "decoder") == "transformer"  # its ATSS head needs the encoder
    assert train.trainable_for_hybrid("off", "heads") == "heads"
    assert train.trainable_for_hybrid("h-detr", "last_layer") == "transformer"  # one-to-many supervises every layer
    build_review_dataset(review_store, 10)
    with pytest.raises(gr.Error, match="little to train"):
        next(train.start_finetune(state, "bundled", 1, 1e-4, "heads", "co-detr"))
    with pytest.raises(gr.Error, match="must be one of"):
        next(train.start_finetune(state, "bundled", 1, 1e-4, "all", "dino"))


def test_forgetting_is_flagged_in_the_result_the_version_and_the_versions_table(state, review_store):
    """A fine-tune at a learning rate that wrecks the model: every old class it got worse at by more
    than 0.05 is named on the page, in version.json and in the versions table."""
    build_review_dataset(review_store, 16)
    outputs = list(train.start_finetune(state, "bundled", 2, 3e-2, "all"))
    status = outputs[-1][0]
    forgetting = state.registry.get("version:v0001").info["forgetting"]
    assert forgetting["limit"] == 0.05 and forgetting["classes"], status
    assert set(forgetting["classes"]) <= {"circle", "square", "triangle"}  # old classes only, never the new star
    assert all(change < -0.05 for change in forgetting["classes"].values())
    assert "**Forgetting:**" in status and all(name in status for name in forgetting["classes"])
    assert all(name in train.versions_table(state)[0][5] for name in forgetting["classes"])


@pytest.mark.parametrize("before, after, flagged", [
    ({"circle": 0.8}, {"circle": 0.74}, {"circle": -0.06}),  # more than 0.05 down
    ({"circle": 0.8}, {"circle": 0.76}, {}),  # within the limit
    ({"circle": 0.8}, {"circle": 0.9}, {}),  # better
    ({"circle": -1.0}, {"circle": 0.2}, {}),  # no validation boxes before: not judged
    ({"circle": 0.8}, {"circle": -1.0}, {}),  # none after
    ({"star": 0.0}, {"star": -1.0}, {}),  # a class the base did not have is never "forgotten"
])
def test_forgotten_classes(before, after, flagged):
    from core.evaluate import Metrics
    from training.choices import forgotten_classes

    def metrics(per_class):
        return Metrics(0.5, 0.5, 0.5, 0.5, 0.5, 0.5, per_class=per_class)

    assert forgotten_classes(metrics(before), metrics(after), ["circle", "square", "triangle"]) == flagged

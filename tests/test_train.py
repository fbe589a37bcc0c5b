"""The training loop: learns, resumes at the right step, guards against NaN, cancels, runs under DDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model
from core.checkpoints import latest_checkpoint, load_checkpoint
from core.loading import load_detector
from core.forward import AllDecoderLayers
from core.train import NonFiniteLossError, TrainConfig, train
from datasets.shapes import ShapesDataset

ROOT = Path(__file__).resolve().parents[1]


tiny = tiny_model


def quick(**overrides) -> TrainConfig:
    settings = dict(epochs=1000, max_steps=6, batch_size=2, lr=1e-3, lr_backbone=1e-3, freeze_stem=False, shortest_edge=96,
                    longest_edge=128, log_every=1, seed=0)
    return TrainConfig(**{**settings, **overrides})


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_all_decoder_layers_end_with_the_models_output(kind):
    model = tiny(kind).eval()
    model.config.auxiliary_loss = True
    pixels, mask = torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long)
    with torch.no_grad():
        reference = model(pixel_values=pixels, pixel_mask=mask)
        logits, boxes = AllDecoderLayers(model)(pixels, mask)
    assert logits.shape[0] == boxes.shape[0] == model.config.decoder_layers
    assert torch.allclose(logits[-1], reference.logits, atol=1e-6)
    assert torch.allclose(boxes[-1], reference.pred_boxes, atol=1e-6)


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_a_few_steps_reduce_the_loss(kind):
    """Overfitting four images: the loss of the last steps is well below that of the first ones
    (measured: about 0.8x after 25 steps, 0.6x after 40)."""
    seen = []
    train(tiny(kind), ShapesDataset(4, first_seed=7), quick(max_steps=40, batch_size=4, lr=2e-3,
                                                                 lr_backbone=2e-3),
          progress=lambda p: seen.append(p.losses["loss"]))
    assert len(seen) == 40
    assert sum(seen[-5:]) < 0.8 * sum(seen[:5])


def test_backbone_is_trained_unless_frozen():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items() if ".backbone." in k and "convolution" in k}
    train(model, ShapesDataset(4), quick(max_steps=2))
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # transformers alone would freeze it all
    frozen = tiny()
    before = {k: v.clone() for k, v in frozen.state_dict().items() if ".backbone." in k}
    train(frozen, ShapesDataset(4), quick(max_steps=2, trainable="transformer"))
    assert all(torch.equal(before[k], frozen.state_dict()[k]) for k in before)


@pytest.mark.parametrize("trainable, changes, stays", [
    ("heads", ["class_labels_classifier", "bbox_predictor"], ["model.decoder.", "model.encoder.", "model.backbone."]),
    ("decoder", ["model.decoder.layers.", "class_labels_classifier"], ["model.encoder.", "model.backbone."]),
])
def test_trainable_parts(trainable, changes, stays):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, ShapesDataset(4), quick(max_steps=2, trainable=trainable))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    for part in changes:
        assert any(part in k for k in moved), part
    for part in stays:
        assert not any(part in k for k in moved), part


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_last_layer_trains_the_decoders_last_layer_and_the_heads_only(kind):
    model = tiny(kind)  # two decoder layers
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, ShapesDataset(4), quick(max_steps=2, trainable="last_layer"))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("model.decoder.layers.1.self_attn.") for k in moved)
    assert any(k.startswith("class_labels_classifier.") for k in moved)
    assert all(k.startswith(("model.decoder.layers.1.", "class_labels_classifier.", "bbox_predictor."))
               for k in moved), sorted(moved)  # the first layer, the shared norm, the queries stay


def test_the_box_head_can_learn_at_its_own_rate():
    """``box_lr_scale`` 0 keeps the box head as it was while the class head trains at ``lr``."""
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, ShapesDataset(4), quick(max_steps=2, trainable="heads", box_lr_scale=0.0))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert moved and all(k.startswith("class_labels_classifier.") for k in moved)


def test_unknown_trainable_part_is_refused():
    with pytest.raises(ValueError, match="must be one of all, transformer"):
        train(tiny(), ShapesDataset(2), quick(max_steps=1, trainable="everything"))


def test_time_budget_pauses_and_chunks_equal_one_run(tmp_path):
    """A simulated ZeroGPU budget (injected clock: one second per reading) splits training into
    paused chunks; with flips and scale jitter the chunks still end where one straight run ends."""
    dataset = ShapesDataset(8, first_seed=30)
    augmented = dict(max_steps=7, hflip=0.5, scale_jitter=(0.75, 1.0), checkpoint_dir=str(tmp_path / "chunks"))
    straight = tiny()
    train(straight, dataset, quick(**{**augmented, "checkpoint_dir": None}))
    ticks = iter(range(10_000))
    chunked, statuses = tiny(), []
    while not statuses or statuses[-1] == "paused":
        statuses.append(train(chunked, dataset, quick(**augmented), budget_s=2.5,
                              clock=lambda: float(next(ticks))).status)
        chunked = tiny(seed=len(statuses))  # a fresh process: everything must come from the checkpoint
    assert statuses[:-1] == ["paused"] * (len(statuses) - 1) and statuses[-1] == "finished" and len(statuses) >= 3
    load_checkpoint(latest_checkpoint(tmp_path / "chunks"), chunked)
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, chunked.state_dict()[key], atol=1e-6), key
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        train(tiny(), dataset, quick(), budget_s=10)


def test_resume_after_a_crash_continues_at_the_right_step(tmp_path):
    dataset = ShapesDataset(8, first_seed=20)
    straight = tiny()
    train(straight, dataset, quick(max_steps=6))

    class Crash(Exception):
        pass

    def crash_at_5(p):
        if p.step == 5:
            raise Crash

    crashed = tiny()
    with pytest.raises(Crash):
        train(crashed, dataset, quick(max_steps=6, checkpoint_dir=str(tmp_path), checkpoint_every=3),
              progress=crash_at_5)
    assert latest_checkpoint(tmp_path).name == "checkpoint-0000003"
    # a half-written checkpoint (no state.json) and a temporary directory are ignored
    shutil.copytree(tmp_path / "checkpoint-0000003", tmp_path / "checkpoint-0000009")
    (tmp_path / "checkpoint-0000009" / "state.json").unlink()
    (tmp_path / ".checkpoint-abc").mkdir()

    resumed = tiny(seed=123)  # different initial weights: everything must come from the checkpoint
    steps = []
    result = train(resumed, dataset, quick(max_steps=6, checkpoint_dir=str(tmp_path), checkpoint_every=3),
                   progress=lambda p: steps.append(p.step))
    assert steps == [4, 5, 6] and result.step == 6
    for key, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key
    state = json.loads((tmp_path / "checkpoint-0000006" / "state.json").read_text())
    assert state["step"] == 6 and state["labels"] == ["circle", "square", "triangle"]
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickles
    assert load_detector(tmp_path / "checkpoint-0000006").labels == ["circle", "square", "triangle"]


def _poison(model, steps_to_poison):
    """Make the class head return NaN on the given forward calls."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] in steps_to_poison else output

    model.class_labels_classifier.register_forward_hook(hook)


def test_one_nan_step_is_skipped():
    model = tiny()
    _poison(model, {3})
    result = train(model, ShapesDataset(8), quick(max_steps=6))
    assert result.skipped_steps == [2] and result.status == "finished" and result.step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_nan_stops_with_the_step_named():
    model = tiny()
    _poison(model, set(range(2, 100)))
    with pytest.raises(NonFiniteLossError, match="3 steps in a row, the last at step 3"):
        train(model, ShapesDataset(8), quick(max_steps=6))


def test_cancel_stops_within_one_step(tmp_path):
    cancel = threading.Event()
    steps = []

    def on_progress(p):
        steps.append(p.step)
        if p.step == 2:
            cancel.set()

    result = train(tiny(), ShapesDataset(8), quick(max_steps=6, checkpoint_dir=str(tmp_path)),
                   progress=on_progress, cancel=cancel)
    assert result.status == "cancelled" and result.step == 2 and steps == [1, 2]
    assert latest_checkpoint(tmp_path) is None  # nothing half-done was written


@pytest.mark.parametrize("hybrid", ["off", "co-detr"])
def test_two_processes_end_with_identical_weights(tmp_path, hybrid):
    """Real two-process DDP on CPU (gloo) through torchrun and Accelerate; with Co-DETR's branch
    too (its weights are averaged with the model's; every one of them is used each step)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port; torchrun's --master_port 0 waits forever
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(ROOT / "tests" / "ddp_train.py"), str(tmp_path), hybrid],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text() == "2 4"
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    initial = tiny().state_dict()
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0)  # it trained
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

"""Fine-tuning on reviewed data: stable split, head extension, the versions registry, the job, the
shortened end-to-end check (the bundled model learns `star`)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LABELS, tiny_model
from core.flags import with_flags
from core.heads import extend_head
from training.config import FinetuneConfig
from training.finetune import FinetuneError, finetune
from training.registry import Registry, RegistryError
from training.split import is_validation, validation_ids


def settings(**values) -> FinetuneConfig:
    """The fine-tune's defaults with some settings changed, named as the command line names them."""
    return with_flags(FinetuneConfig(), **values)


def test_split_is_stable_and_about_the_fraction():
    ids = [f"{i:024x}" for i in range(2000)]
    first = [is_validation(i, 0.2) for i in ids]
    assert first == [is_validation(i, 0.2) for i in reversed(ids)][::-1]  # order and company do not matter
    assert 0.17 < np.mean(first) < 0.23
    # a larger fraction only moves samples into validation, never out
    assert all(is_validation(i, 0.3) for i, v in zip(ids, first) if v)
    # with few samples the hash may choose none; then the lowest in the hash order validates
    few = {i: i for i in ids[:6]}
    assert validation_ids(few, 0.0001) and len(validation_ids(few, 0.0001)) == 1
    assert validation_ids({i: i for i in ids[:4]}, 0.0001) == set()  # fewer than 5: no forced validation sample
    # the split hashes each sample's key (its image's content hash), and answers with sample ids
    keys = {f"id{n}": key for n, key in enumerate(ids[:40])}
    assert validation_ids(keys, 0.2) == {i for i, key in keys.items() if is_validation(key, 0.2)}


def test_settings_by_flag_name_reach_the_nested_configs():
    config = settings(epochs=3, lr=1e-3, hybrid="co-detr", anchor_scale=4.0, patience=2)
    assert (config.train.epochs, config.train.lr, config.hybrid.method, config.hybrid.anchor_scale,
            config.patience) == (3, 1e-3, "co-detr", 4.0, 2)
    assert config.train.batch_size == FinetuneConfig().train.batch_size  # the rest keep the defaults
    with pytest.raises(TypeError, match="no setting epoch"):
        settings(epoch=3)


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_new_class_extends_the_head_without_changing_old_rows(kind):
    model = tiny_model(kind)
    old_weight = model.class_labels_classifier.weight.detach().clone()
    old_bias = model.class_labels_classifier.bias.detach().clone()
    extend_head(model, LABELS + ["star", "hexagon"])
    head = model.class_labels_classifier
    extra = 1 if kind == "detr" else 0
    assert head.out_features == 5 + extra
    assert torch.equal(head.weight[:3], old_weight[:3]) and torch.equal(head.bias[:3], old_bias[:3])
    if kind == "detr":  # the no-object row moves to the end, unchanged
        assert torch.equal(head.weight[-1], old_weight[-1]) and torch.equal(head.bias[-1], old_bias[-1])
    assert model.config.id2label == {0: "circle", 1: "square", 2: "triangle", 3: "star", 4: "hexagon"}
    assert model.config.num_labels == 5
    # the model still runs and outputs the new number of classes
    out = model(pixel_values=torch.rand(1, 3, 64, 64))
    assert out.logits.shape[-1] == 5 + extra
    with pytest.raises(ValueError, match="start with the base model's labels"):
        extend_head(model, ["star"] + LABELS)


def test_registry_never_overwrites_and_survives_a_crash(tmp_path):
    registry = Registry(tmp_path / "models")
    model = tiny_model("detr")
    first = registry.add(model.save_pretrained, {"parent": "bundled"})
    second = registry.add(model.save_pretrained, {"parent": first.name})
    assert [v.id for v in registry.versions()] == ["v0001", "v0002"]
    assert second.parent == "version:v0001" and registry.get("version:v0002").path == second.path

    def crash(directory):
        model.save_pretrained(directory)
        raise RuntimeError("power cut while writing")

    before = sorted(p.name for p in (tmp_path / "models").iterdir())
    with pytest.raises(RuntimeError, match="power cut"):
        registry.add(crash, {"parent": "bundled"})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == before  # nothing half-written visible
    assert [v.id for v in registry.versions()] == ["v0001", "v0002"]
    # A leftover from a hard kill (no version.json, hidden name) is ignored and swept on the next add.
    (tmp_path / "models" / ".tmp-deadbeef").mkdir()
    (tmp_path / "models" / "v0007").mkdir()  # a directory without version.json is not a version
    third = registry.add(model.save_pretrained, {})
    assert third.id == "v0008" and not (tmp_path / "models" / ".tmp-deadbeef").exists()
    assert json.loads((third.path / "version.json").read_text())["id"] == "v0008"
    with pytest.raises(RegistryError, match="no model version 'v0042'"):
        registry.get("version:v0042")


def _reviewed_store(store, count, with_star=True, first_seed=2_000_000):
    from training.star_check import build_review_dataset

    return build_review_dataset(store, count, first_seed)


def test_too_few_reviewed_samples_is_a_clear_error(review_store, tmp_path):
    _reviewed_store(review_store, 2)
    with pytest.raises(FinetuneError, match="review more images"):
        finetune(review_store.dataset, "bundled", FinetuneConfig(), registry=Registry(tmp_path / "models"))
    assert Registry(tmp_path / "models").versions() == []


def test_the_split_follows_the_images_so_a_rebuilt_dataset_splits_alike(review_store, tmp_path):
    """The same reviewed images in a new dataset (new sample ids) validate on the same images."""
    from datasets.review import ReviewStore, pixel_hash, reviewed_samples
    from training.split import validation_ids

    def validating_images(store) -> set[str]:
        samples = reviewed_samples(store.dataset)
        val = validation_ids({s.sample_id: s.split_key for s in samples}, 0.3)
        return {s.content_hash for s in samples if s.sample_id in val}

    _reviewed_store(review_store, 12)
    first = reviewed_samples(review_store.dataset)
    assert all(s.content_hash == pixel_hash(np.asarray(Image.open(s.filepath).convert("RGB"))) for s in first)
    rebuilt = ReviewStore.open("split-rebuilt", tmp_path / "rebuilt")
    try:
        _reviewed_store(rebuilt, 12)
        assert {s.sample_id for s in reviewed_samples(rebuilt.dataset)}.isdisjoint(s.sample_id for s in first)
        assert validating_images(rebuilt) == validating_images(review_store) != set()
    finally:
        rebuilt.dataset.delete()


def test_zerogpu_sized_chunks_give_the_result_of_one_run(review_store, tmp_path):
    """A simulated ZeroGPU budget (injected clock, one second per reading, 3 s per call) runs the
    fine-tune as several resumable chunks, each from files only; the version equals one straight run."""
    from safetensors.torch import load_file

    from training.job import run_chunk

    _reviewed_store(review_store, 12)
    config = settings(epochs=3, batch_size=2, patience=10)
    straight = finetune(review_store.dataset, "bundled", config, out_dir=tmp_path / "straight")
    ticks, calls = iter(range(100_000)), []

    def chunk(work_dir, **kwargs):  # what the Train tab wraps in spaces.GPU
        calls.append(run_chunk(work_dir, **kwargs))
        return calls[-1]

    chunked = finetune(review_store.dataset, "bundled", config, out_dir=tmp_path / "chunked",
                       work_dir=tmp_path / "job", chunk_s=3, run=chunk, clock=lambda: float(next(ticks)))
    assert len(calls) >= 3 and set(calls[:-1]) == {"paused"} and calls[-1] == "finished"
    assert chunked.history == straight.history and chunked.after == straight.after
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "chunked" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not (tmp_path / "job" / "checkpoints").exists()  # cleaned once the version is written


def test_cancel_stops_and_registers_nothing(review_store, tmp_path):
    _reviewed_store(review_store, 12)
    cancel = threading.Event()
    steps = []

    def progress(p):
        steps.append(p.step)
        cancel.set()  # cancel as soon as the first progress report arrives

    registry = Registry(tmp_path / "models")
    result = finetune(review_store.dataset, "bundled", settings(epochs=50, batch_size=2), registry=registry,
                      progress=progress, cancel=cancel)
    assert result.status == "cancelled" and result.version is None
    assert steps == [5]  # log_every = 5: the cancel was seen before step 6
    assert registry.versions() == []


def test_shortened_end_to_end_learns_the_new_class(review_store, tmp_path):
    """The star check in small: 32 reviewed images, about two minutes of CPU training."""
    from core.evaluate import evaluate_model
    from core.loading import load_detector
    from datasets.shapes import ShapesSpec, write_coco

    _reviewed_store(review_store, 32)
    registry = Registry(tmp_path / "models")
    epochs = []
    config = settings(epochs=40, patience=40)
    result = finetune(review_store.dataset, "bundled", config, registry=registry, on_epoch=epochs.append)
    assert result.version == "version:v0001" and len(epochs) == 40
    assert result.labels == ["circle", "square", "triangle", "star"]
    version = registry.get(result.version)
    info = version.info
    assert info["parent"] == "bundled" and set(info["train_ids"]).isdisjoint(info["val_ids"])
    assert len(info["train_ids"]) + len(info["val_ids"]) == 32
    assert info["metrics"]["before"]["per_class"]["star"] in (0.0, -1.0)
    # the version runs at the inference size chosen on validation, one of the sizes tried (288 x 1, 1.125, 1.25)
    chosen = info["inference_size"]
    assert set(chosen["validation_ap"]) == {"288", "324", "360"} and result.inference_size == chosen["shortest_edge"]
    assert chosen["validation_ap"][str(result.inference_size)] == pytest.approx(info["metrics"]["after"]["AP"], abs=1e-4)
    written = load_detector(version.path).preprocess
    assert (written.shortest_edge, written.longest_edge) == (result.inference_size, chosen["longest_edge"])
    # duplicate removal: scored with and without at each size on one forward pass; the version's config.json
    # holds the choice at the size chosen, and the validation AP reported is the one of that choice
    duplicates, size = info["duplicates"], str(result.inference_size)
    assert set(duplicates["validation_ap"]) == {"288", "324", "360"} and duplicates["iou"] == result.duplicate_iou
    scored = duplicates["validation_ap"][size]
    assert result.duplicate_iou in (0.7, None)
    margin = scored["removed"] - (scored["kept"] - 0.01)  # the rule on unrounded AP; version.json has 4 digits
    assert margin >= -1e-4 if result.duplicate_iou else margin < 1e-4, (scored, result.duplicate_iou)
    assert load_detector(version.path).duplicate_iou == result.duplicate_iou
    # then the test-time flip, on the removal's choice: the same rule, the AP reported is the one chosen
    flips = info["test_time_flip"]
    assert set(flips["validation_ap"]) == {"288", "324", "360"} and flips["on"] == result.test_time_flip
    plain, flipped = flips["validation_ap"][size]["plain"], flips["validation_ap"][size]["flipped"]
    assert plain == scored["removed" if result.duplicate_iou else "kept"]
    margin = flipped - (plain - 0.01)
    assert margin >= -1e-4 if result.test_time_flip else margin < 1e-4, (plain, flipped, result.test_time_flip)
    assert chosen["validation_ap"][size] == (flipped if result.test_time_flip else plain)
    assert load_detector(version.path).test_time_flip == result.test_time_flip
    # 60 held-out images: with 24, one class's AP moved by up to ~0.2 between runs of the same training
    held_out = write_coco(tmp_path / "held_out", 60, 3_000_000, ShapesSpec(with_star=True))
    before = evaluate_model(load_detector("bundled"), held_out.parent)
    after = evaluate_model(load_detector(version.path), held_out.parent)
    print("shortened star check, before:", before.per_class, "after:", after.per_class)
    # Before, the model had no star class at all (AP 0). 40 short epochs of the defaults (last decoder
    # layer and heads, distilled) give a real AP (0.35 measured on 2 CPU cores, old classes within
    # -0.03); the full check (`python -m training.star_check`) has the table.
    assert after.per_class["star"] > 0.1, after.table()
    for name in ("circle", "square", "triangle"):  # a fine-tune of the defaults must not wreck the old classes
        assert after.per_class[name] > before.per_class[name] - 0.2, (name, before.table(), after.table())


def test_cli_names_the_missing_dataset(review_store, capsys):
    from training.finetune import main

    assert main(["--dataset", "no-such-dataset", "--data-dir", str(review_store.media_dir.parent)]) == 2
    assert "no FiftyOne dataset 'no-such-dataset'" in capsys.readouterr().err


def test_fine_tune_with_co_detr_writes_a_plain_model(review_store, tmp_path):
    """The one-click fine-tune with Co-DETR's branch: the version has exactly the base model's
    weights names and shapes (plus nothing), and the branch left no file beside it."""
    from safetensors.torch import load_file

    from core.loading import BUNDLED_DIR

    _reviewed_store(review_store, 12)
    # the positive queries only: with trainable="decoder" the ATSS head would reach only the frozen encoder
    config = settings(epochs=1, batch_size=4, trainable="decoder", lr=5e-4, hybrid="co-detr", anchor_scale=4.0,
                      co_detr_lambda2=0.0)
    result = finetune(review_store.dataset, "bundled", config, out_dir=tmp_path / "model")
    assert result.status in ("finished", "stopped_early")
    base = load_file(BUNDLED_DIR / "model.safetensors")
    new = load_file(tmp_path / "model" / "model.safetensors")
    assert new.keys() == base.keys()
    changed = {k for k in base if base[k].shape == new[k].shape and not torch.equal(base[k], new[k])}
    assert changed and all("decoder" in k or "class_labels" in k or "bbox_predictor" in k or "query" in k
                           for k in changed)  # trainable="decoder": the decoder moved, nothing else
    assert not any("auxiliary" in p.name for p in (tmp_path / "model").iterdir())


@pytest.mark.parametrize("setting, message", [
    ({"hybrid": "co-detr"}, "trainable='last_layer' keeps .nearly all. frozen"),  # the default trainable
    ({"hybrid": "dino", "trainable": "all"}, "hybrid must be one of"),
    ({"duplicate_iou": 1.0}, "duplicate_iou must be at least 0 and below 1"),
])
def test_settings_that_cannot_work_are_refused_before_anything_is_written(review_store, tmp_path, setting,
                                                                                 message):
    _reviewed_store(review_store, 12)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "keep.txt").write_text("an earlier job")
    with pytest.raises(FinetuneError, match=message):
        finetune(review_store.dataset, "bundled", settings(**setting), work_dir=tmp_path / "job",
                 out_dir=tmp_path / "model")
    assert (tmp_path / "job" / "keep.txt").is_file()


def test_a_fine_tune_with_distillation_and_copy_paste_runs_to_a_version(review_store, tmp_path):
    """The mechanics of the two techniques against forgetting through the job (what they are worth
    is the star check's table in docs/fine-tuning.md)."""
    _reviewed_store(review_store, 10)
    config = settings(epochs=2, batch_size=4, distill=1.0, copy_paste=0.5, trainable="decoder", lr=5e-4)
    result = finetune(review_store.dataset, "bundled", config, out_dir=tmp_path / "model")
    assert result.status in ("finished", "stopped_early") and (tmp_path / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "model" / "version.json").read_text())["settings"]["distill"] == 1.0


def test_the_best_epoch_is_chosen_on_validation_ap_averaged_over_recent_epochs():
    from training.choices import smoothed_ap

    history = [{"epoch": e, "val_AP": ap} for e, ap in enumerate([0.5, 0.7, 0.52, 0.6, 0.61, 0.62])]
    assert smoothed_ap(history[:2], 1) == 0.7  # window 1: the epoch's own AP
    assert smoothed_ap(history[:2], 3) == pytest.approx(0.6)  # fewer epochs than the window: those there are
    # a one-epoch swing (epoch 1) does not outrank the settled epochs after it
    scores = [smoothed_ap(history[: e + 1], 3) for e in range(len(history))]
    assert max(range(len(scores)), key=scores.__getitem__) == 5


@pytest.mark.parametrize("pair, size, longest", [
    ((288, 384), 288, 384),  # the training pair itself
    ((288, 384), 324, 432),  # a larger size keeps the training pair's ratio
    ((288, 384), 360, 480),
    ((320, 480), 360, 540),  # a pair set with --shortest-edge / --longest-edge, not the base model's
    ((300, 300), 330, 330),  # square pair: the longest edge is never shorter than the shortest
])
def test_validation_the_sizes_tried_and_the_version_share_one_longest_edge_rule(pair, size, longest):
    from training.job import longest_edge

    assert longest_edge({"size": pair[0], "longest": pair[1]}, size) == longest


@pytest.mark.parametrize("scores, chosen", [
    ({288: 0.60, 324: 0.605, 360: 0.62}, 360),  # more pixels that earn more than the tolerance
    ({288: 0.60, 324: 0.605, 360: 0.609}, 288),  # within 0.01 of the best: the smallest (fastest) wins
    ({288: 0.60, 324: 0.62, 360: 0.625}, 324),  # the smallest of those near the best, not the best itself
    ({288: 0.70, 324: 0.65, 360: 0.60}, 288),  # larger is worse
    ({288: 0.50}, 288),  # one size tried (inference_scales=(1.0,))
])
def test_the_inference_size_is_the_smallest_within_tolerance_of_the_best(scores, chosen):
    from training.choices import inference_size

    assert inference_size(scores, tolerance=0.01) == chosen


@pytest.mark.parametrize("without, with_it, kept", [
    (0.60, 0.62, True),  # duplicates of a new class cost precision / its boxes are unsure: the change earns AP
    (0.60, 0.60, True),  # nothing to change on validation: kept
    (0.60, 0.595, True),  # a few thousandths lower: within what ~10 validation images can tell apart
    (0.60, 0.585, False),  # objects of one class overlapping closely, a model worse mirrored: clearly costs
])
def test_removal_and_flip_are_kept_unless_validation_ap_is_clearly_lower(without, with_it, kept):
    from training.choices import keeps

    assert keeps(without, with_it, tolerance=0.01) is kept


def test_the_kept_epoch_is_the_latest_within_tolerance_of_the_best_score():
    from training.choices import next_kept

    best, kept = {"ap": -1.0, "epoch": -1}, []
    scores = [0.50, 0.70, 0.695, 0.62, 0.692, 0.75, 0.745, 0.70]
    for epoch, score in enumerate(scores):
        best, keep = next_kept(best, epoch, ap=score + 0.001, score=score, tolerance=0.01)
        kept += [epoch] if keep else []
    # 2 and 4 are within 0.01 of the top when scored (0.70); 3 and 7 are not; 5 raises the top, 6 ties it
    assert kept == [0, 1, 2, 4, 5, 6]
    assert best == {"ap": 0.746, "score": 0.745, "epoch": 6, "top": 0.75, "top_epoch": 5}
    # tolerance 0: a later epoch that ties the top is kept, as validation cannot tell them apart
    best, keep = next_kept({"ap": 0.7, "score": 0.7, "epoch": 3}, 4, ap=0.7, score=0.7, tolerance=0.0)
    assert keep and best["epoch"] == 4 and best["top_epoch"] == 3

"""Model loading: local directories, timm-named checkpoints, the bundled fallback, and clear errors."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import core.loading as loading
from conftest import LABELS, save_tiny_model
from core.loading import HubUnreachableError, ModelLoadError, load_detector, load_detector_or_bundled

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    """A random model saved with transformers loads back through our loader with identical outputs."""
    reference = save_tiny_model(tmp_path / "model", kind, return_model=True)
    reference.set_attn_implementation("eager")  # the loader's default; sdpa would differ in the last bits
    detector = load_detector(tmp_path / "model", device="cpu")
    assert detector.labels == LABELS
    assert detector.num_queries == 12
    assert detector.family.no_object == (detector.kind == "detr")
    pixels = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 96, 128, dtype=torch.long)
    with torch.no_grad():
        a = reference(pixel_values=pixels, pixel_mask=mask)
        b = detector.model(pixel_values=pixels, pixel_mask=mask)
    loaded = detector.model.state_dict()
    assert all(torch.equal(value, loaded[key]) for key, value in reference.state_dict().items())
    # Same weights; the loader puts the model in channels-last, which only reorders float sums.
    assert torch.allclose(a.logits, b.logits, rtol=1e-3, atol=1e-3)
    assert torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-4)


def _native_name(timm_key: str) -> str | None:
    """Where a timm backbone key must land in transformers' ResNet, written out arithmetically
    (independently of the regexes in core.loading)."""
    match = re.fullmatch(r"model\.backbone\.(?:conv_encoder\.)?model\.(.+)", timm_key)
    if match is None:
        return None
    rest = match.group(1)
    prefix = "model.backbone.model."
    if m := re.fullmatch(r"(conv|bn)1\.(\w+)", rest):
        part = "convolution" if m.group(1) == "conv" else "normalization"
        return f"{prefix}embedder.embedder.{part}.{m.group(2)}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", rest):
        stage, block, kind, index, tensor = int(m.group(1)), m.group(2), m.group(3), int(m.group(4)), m.group(5)
        part = "convolution" if kind == "conv" else "normalization"
        return f"{prefix}encoder.stages.{stage - 1}.layers.{block}.layer.{index - 1}.{part}.{tensor}"
    if m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", rest):
        stage, block, index, tensor = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        part = "convolution" if index == "0" else "normalization"
        return f"{prefix}encoder.stages.{stage - 1}.layers.{block}.shortcut.{part}.{tensor}"
    raise AssertionError(f"unexpected timm backbone key {timm_key}")


def _legacy_config(config: dict) -> dict:
    """The same model as transformers 4 wrote it (what hub checkpoints such as facebook/detr-resnet-50 have)."""
    legacy = {k: v for k, v in config.items() if k != "backbone_config"}
    legacy.update(use_timm_backbone=True, backbone="resnet50", backbone_config=None, use_pretrained_backbone=True)
    return legacy


@pytest.mark.parametrize("name", ["detr_resnet50", "conditional_detr_resnet50"])
@pytest.mark.parametrize("config_style", ["transformers5", "legacy"])
def test_timm_checkpoint_loads_into_native_backbone(tmp_path, name, config_style):
    """Every key of a timm-backbone R50 checkpoint (fixture dumped with real timm) lands in the
    native ResNet at the right place with the right shape; nothing is missing or left over."""
    fixture = json.loads((FIXTURES / f"timm_keys_{name}.json").read_text())
    generator = torch.Generator().manual_seed(0)
    saved = {key: torch.randn(shape, generator=generator) for key, shape in fixture["saved_keys"].items()}
    save_file(saved, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = fixture["config"] if config_style == "transformers5" else _legacy_config(fixture["config"])
    (tmp_path / "config.json").write_text(json.dumps(config))

    detector = load_detector(tmp_path, device="cpu")  # raises on any missing/unexpected/mismatched key
    loaded = detector.model.state_dict()

    backbone_keys = {key for key in saved if _native_name(key) is not None}
    assert len(backbone_keys) == 265  # ResNet-50: stem 5 + 16 blocks x 15 + 4 shortcuts x 5
    expected = {_native_name(key): key for key in backbone_keys}
    assert set(expected) == {key for key in loaded if ".backbone." in key}
    for native_key, timm_key in expected.items():
        assert torch.equal(loaded[native_key], saved[timm_key]), (timm_key, native_key)
    # The head (not renamed by us, renamed by transformers) carries its weights too.
    assert torch.equal(loaded["class_labels_classifier.weight"], saved["class_labels_classifier.weight"])
    assert detector.model.config.backbone_config.model_type == "resnet"


def test_fixture_names_match_hub_layout():
    """The fixtures hold the legacy names hub checkpoints use, so the test above exercises them."""
    keys = json.loads((FIXTURES / "timm_keys_detr_resnet50.json").read_text())["saved_keys"]
    assert "model.backbone.conv_encoder.model.layer1.0.downsample.0.weight" in keys
    assert keys["model.backbone.conv_encoder.model.conv1.weight"] == [64, 3, 7, 7]
    assert len(keys) == 530


@pytest.mark.parametrize(
    "backbone, extra, message",
    [
        ("resnet50", {"dilation": True}, "dilated"),  # DC5 checkpoints need timm's dilation
        ("efficientnet_b0", {}, "efficientnet_b0"),  # not a ResNet
    ],
)
def test_unsupported_timm_backbones(tmp_path, backbone, extra, message):
    config = {"model_type": "detr", "use_timm_backbone": True, "backbone": backbone, **extra}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=message):
        load_detector(tmp_path)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_architecture(tmp_path, tiny_detr_dir):
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, model_type="yolos")
    with pytest.raises(ModelLoadError, match="'yolos' model; DETR Studio loads detr and conditional_detr"):
        load_detector(directory)


def test_pickle_weights_are_refused(tmp_path, tiny_detr_dir):
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin .pickle.*safetensors"):
        load_detector(directory)


@pytest.mark.parametrize(
    "changes",
    [
        {"num_queries": 20},  # a tensor of another shape
        {"decoder_layers": 3},  # weights for a layer the checkpoint lacks
        {"id2label": {"0": "a"}, "label2id": {"a": 0}},  # a smaller classification head
    ],
)
def test_checkpoint_that_does_not_match_its_config(tmp_path, tiny_detr_dir, changes):
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, **changes)
    with pytest.raises(ModelLoadError, match="do not fit its config|does not match its config"):
        load_detector(directory)


def test_label_names_must_cover_every_id(tmp_path, tiny_detr_dir):
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, id2label={"0": "circle", "1": "square", "5": "triangle"})
    with pytest.raises(ModelLoadError, match="id2label"):
        load_detector(directory)


@pytest.mark.parametrize(
    "name, message",
    [
        ("not a model name!", "neither a local directory"),
        ("bundled", "bundled model is missing"),
    ],
)
def test_bad_names(monkeypatch, tmp_path, name, message):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tmp_path / "no-bundled")
    with pytest.raises(ModelLoadError, match=message):
        load_detector(name)


def test_directory_without_config_and_file_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_detector(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_detector(tmp_path / "weights.safetensors")


def test_hub_id_offline_fails_fast_with_a_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as error:
        load_detector("facebook/detr-resnet-50")
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "facebook/detr-resnet-50" in message and "could not fetch" in message.lower()
    assert "directory" in message  # says how to point at a local copy


def test_offline_hub_falls_back_to_bundled(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "BUNDLED_DIR", save_tiny_model(tmp_path / "bundled"))
    detector = load_detector_or_bundled("facebook/detr-resnet-50", device="cpu")
    assert detector.name == "bundled"
    assert "facebook/detr-resnet-50" in detector.note and "bundled" in detector.note


def test_broken_local_model_does_not_fall_back(monkeypatch, tmp_path, tiny_detr_dir):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tiny_detr_dir)
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, model_type="yolos")
    with pytest.raises(ModelLoadError, match="yolos"):
        load_detector_or_bundled(directory)


def test_preprocessor_config_is_read(tmp_path, tiny_detr_dir):
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 512, "longest_edge": 853}, "image_mean": [0.5, 0.5, 0.5]})
    )
    detector = load_detector(directory)
    assert (detector.preprocess.shortest_edge, detector.preprocess.longest_edge) == (512, 853)
    assert detector.preprocess.image_mean == (0.5, 0.5, 0.5)


def test_the_test_time_flip_is_read_from_config_and_checked(tmp_path, tiny_detr_dir):
    assert load_detector(tiny_detr_dir).test_time_flip is False  # hub and bundled models: one pass
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, test_time_flip=True)
    assert load_detector(directory).test_time_flip is True
    for bad in ("true", 1, 0):
        _edit_config(directory, test_time_flip=bad)
        with pytest.raises(ModelLoadError, match="test_time_flip is .* it must be true, false or absent"):
            load_detector(directory)


def test_duplicate_removal_is_read_from_config_and_checked(tmp_path, tiny_detr_dir):
    assert load_detector(tiny_detr_dir).duplicate_iou is None  # hub and bundled models: every query stands
    directory = _copy(tiny_detr_dir, tmp_path / "m")
    _edit_config(directory, duplicate_iou=0.7)
    assert load_detector(directory).duplicate_iou == 0.7
    for bad in (1.5, "0.7", True, 0):
        _edit_config(directory, duplicate_iou=bad)
        with pytest.raises(ModelLoadError, match="duplicate_iou .* must be a number between 0 and 1"):
            load_detector(directory)

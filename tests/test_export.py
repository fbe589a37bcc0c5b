"""ONNX export and the CPU engines: the graph equals the PyTorch model for both families at sizes it
was not exported at, ONNX Runtime and OpenVINO give the same detections as PyTorch, exports are
cached per weights and rebuilt when they change, and an engine that is missing or fails falls back
to PyTorch with a note."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from conftest import save_tiny_model
from core.engines import OnnxRuntimeEngine, attach_engine, default_cache_dir
from core.export import INFO_FILE, MODEL_FILE, TOLERANCE, ExportError, cached_export, export_onnx
from core.inference import predict
from core.loading import load_detector

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["detr", "conditional_detr"])
def exported(request, tmp_path_factory):
    """A calm tiny model of each family and its export (with the attention output)."""
    directory = save_tiny_model(tmp_path_factory.mktemp(f"export_{request.param}"), request.param, init_std=0.1)
    detector = load_detector(directory, device="cpu")
    info = export_onnx(detector, directory / "onnx", attention=True, check_sizes=((96, 128), (160, 120)))
    return detector, directory / "onnx", info


def test_export_writes_the_graph_and_what_it_is(exported):
    detector, folder, info = exported
    written = json.loads((folder / INFO_FILE).read_text())
    assert written["labels"] == detector.labels and written["family"] == detector.kind
    assert written["num_queries"] == 12 and written["preprocess"]["shortest_edge"] == 800
    assert set(written["max_diff"]) == {"96x128", "160x120"} and max(written["max_diff"].values()) <= TOLERANCE


@pytest.mark.parametrize("batch, height, width", [(1, 64, 64), (3, 200, 96), (2, 333, 257)])
def test_the_graph_equals_pytorch_at_sizes_it_was_not_exported_at(exported, batch, height, width):
    import onnxruntime

    detector, folder, _ = exported
    generator = torch.Generator().manual_seed(height)
    pixels = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.ones(batch, height, width, dtype=torch.long)
    mask[-1, height // 2:, :] = 0  # the last image padded at the bottom
    with torch.inference_mode():
        ours = detector.model(pixel_values=pixels, pixel_mask=mask, output_attentions=True)
    session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    logits, boxes, attention = session.run(None, {"pixel_values": pixels.numpy(), "pixel_mask": mask.numpy()})
    assert logits.shape == tuple(ours.logits.shape) and boxes.shape == tuple(ours.pred_boxes.shape)
    assert np.abs(logits - ours.logits.numpy()).max() < 1e-4
    assert np.abs(boxes - ours.pred_boxes.numpy()).max() < 1e-5
    assert np.abs(attention - torch.stack(ours.cross_attentions).numpy()).max() < 1e-5


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engines_give_the_detections_pytorch_gives(calm_model_dir, engine, tmp_path):
    images = [data.coffee(), data.astronaut()[::2, ::3]]  # two sizes: a padded batch
    reference = load_detector(calm_model_dir, device="cpu")
    expected = predict(reference, images, shortest_edge=160)
    detector = load_detector(calm_model_dir, device="cpu")
    assert attach_engine(detector, engine, default_cache_dir()) is None and detector.engine_name == engine
    got = predict(detector, images, shortest_edge=160)
    for ours, theirs in zip(got, expected):
        assert np.array_equal(ours.label_ids, theirs.label_ids)
        assert np.abs(ours.scores - theirs.scores).max() < 1e-4
        assert np.abs(ours.boxes - theirs.boxes).max() < 0.05  # pixels
        assert ours.to_detections(0.3).data["query_index"].tolist() == theirs.to_detections(0.3).data[
            "query_index"].tolist()
    # the attention maps need PyTorch: asking for them runs it, whatever the engine
    with_maps = predict(detector, images[:1], shortest_edge=160, attention_layers=[-1])[0]
    assert with_maps.attention and np.array_equal(with_maps.label_ids, expected[0].label_ids)


def test_exports_are_cached_per_weights_and_rebuilt_when_they_change(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", "detr", seed=1, init_std=0.1)
    cache = tmp_path / "cache"
    first = cached_export(load_detector(model_dir, device="cpu"), cache)
    stamp = first.stat().st_mtime_ns
    assert cached_export(load_detector(model_dir, device="cpu"), cache) == first and first.stat().st_mtime_ns == stamp
    save_tiny_model(model_dir, "detr", seed=2, init_std=0.1)  # a new version of the weights in the same folder
    second = cached_export(load_detector(model_dir, device="cpu"), cache)
    assert second != first and second.is_file()


def test_a_missing_engine_falls_back_to_pytorch_with_a_note(calm_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    detector = load_detector(calm_model_dir, device="cpu")
    note = attach_engine(detector, "openvino", tmp_path / "cache")
    assert "openvino" in note and "PyTorch runs it instead" in note
    assert not (tmp_path / "cache").exists()  # nothing was exported for an engine that cannot run
    assert detector.engine is None and detector.engine_name == "torch"
    assert predict(detector, [data.coffee()], shortest_edge=128)[0].num_queries == 12  # and it still detects


def test_a_broken_graph_falls_back_to_pytorch_with_a_note(calm_model_dir, tmp_path):
    detector = load_detector(calm_model_dir, device="cpu")
    graph = cached_export(detector, tmp_path / "cache")
    graph.write_bytes(b"not an onnx file")  # damaged on disk after it was exported
    note = attach_engine(detector, "onnxruntime", tmp_path / "cache")
    assert note and "onnxruntime" in note and detector.engine is None
    with pytest.raises(ValueError, match="engine must be one of"):
        attach_engine(detector, "tensorrt", tmp_path / "cache")


def test_export_refuses_a_folder_that_holds_other_files(calm_model_dir, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="holds other files"):
        export_onnx(load_detector(calm_model_dir, device="cpu"), tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


def test_export_command_line(tiny_conditional_dir, tmp_path):
    run = subprocess.run([sys.executable, "-m", "core.export", str(tiny_conditional_dir), "--out", str(tmp_path / "g"),
                          "--check", "96x128"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote" in run.stdout and (tmp_path / "g" / MODEL_FILE).is_file()
    session = OnnxRuntimeEngine(tmp_path / "g" / MODEL_FILE)
    logits, boxes = session(np.zeros((1, 3, 64, 64), np.float32), np.ones((1, 64, 64), np.int64))
    assert logits.shape == (1, 12, 3) and boxes.shape == (1, 12, 4)
    bad = subprocess.run([sys.executable, "-m", "core.export", str(tiny_conditional_dir), "--out", str(tmp_path / "h"),
                          "--check", "big"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "--check takes sizes" in bad.stderr


def test_the_predict_command_line_gives_the_same_detections_with_each_engine(calm_model_dir, tmp_path):
    from PIL import Image

    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    documents = {}
    for engine in ("torch", "onnxruntime"):
        run = subprocess.run([sys.executable, "-m", "core.predict", str(tmp_path / "coffee.png"), "--model",
                              str(calm_model_dir), "--threshold", "0.3", "--size", "160", "--engine", engine,
                              "--out", str(tmp_path / engine)], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0 and "note:" not in run.stderr, run.stderr[-2000:]
        documents[engine] = json.loads((tmp_path / engine / "coffee.json").read_text())
    ours, theirs = documents["onnxruntime"]["detections"], documents["torch"]["detections"]
    assert [(d["label"], d["query_index"]) for d in ours] == [(d["label"], d["query_index"]) for d in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) < 1e-3


@pytest.mark.parametrize("height, width", [(120, 160), (160, 120), (100, 100), (97, 211), (800, 1066), (33, 32)])
def test_exported_mask_downsampling_is_pytorchs_nearest(height, width):
    """The export's mask downsampling picks the same source pixels as interpolate(mode='nearest')
    for every feature size (ONNX's own Resize is one pixel short at whole-number products)."""
    from core.export import _nearest_mask

    mask = (torch.rand(2, height, width, generator=torch.Generator().manual_seed(height + width)) > 0.5).long()
    for size in [(height // 32 + 1, width // 32 + 1), (max(height // 8, 1), max(width // 8, 1)), (3, 7), (height, width)]:
        expected = torch.nn.functional.interpolate(mask[None].float(), size=size).to(torch.bool)[0]
        assert torch.equal(_nearest_mask(mask, size), expected), size


def test_detection_runs_beside_a_background_export(tiny_detr_dir, tmp_path):
    """The app prepares an engine while it keeps detecting; the export runs in its own process, since
    torch.export beside inference in another thread aborted the whole server."""
    from app.models import ModelCache

    cache = ModelCache(engine="onnxruntime", engine_cache=tmp_path / "engines")
    detector = cache.get(str(tiny_detr_dir))
    thread = cache._preparing[str(tiny_detr_dir)]
    runs = 0
    while thread.is_alive() or runs == 0:
        predict(detector, [data.coffee()], shortest_edge=128)
        runs += 1
    assert detector.engine_name == "onnxruntime" and cache.engine_note(str(tiny_detr_dir)) is None
    assert runs >= 1

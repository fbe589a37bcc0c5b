"""The Detect tab: the handler called directly, and the running app through its `detect` API."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from skimage import data

from app.detect import detect
from conftest import LABELS


def test_detect_returns_picture_rows_and_status(state, tiny_detr_dir):
    image = data.astronaut()
    annotated, rows, status = detect(state, image, str(tiny_detr_dir), 0.6, 320)
    assert annotated.shape == image.shape and annotated.dtype == np.uint8
    assert not np.array_equal(annotated, image) or not rows  # boxes were drawn when there are detections
    assert rows, "the high-gain tiny model has queries above 0.6"
    scores = [row[2] for row in rows]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.6
    for query, label, score, x1, y1, x2, y2 in rows:
        assert label in LABELS and 0 <= query < 12
        assert 0 <= x1 <= x2 <= image.shape[1] and 0 <= y1 <= y2 <= image.shape[0]
    assert f"{len(rows)} detections of 12 queries" in status and " s " in status


def test_higher_threshold_gives_fewer_rows(state, tiny_detr_dir):
    image = data.coffee()
    _, low, _ = detect(state, image, str(tiny_detr_dir), 0.3, 320)
    _, high, _ = detect(state, image, str(tiny_detr_dir), 0.95, 320)
    assert len(high) < len(low)
    assert {row[0] for row in high} <= {row[0] for row in low}


@pytest.mark.parametrize(
    "image, model, threshold, message",
    [
        (None, "bundled", 0.5, "Upload an image"),
        (np.zeros((4, 4, 2), dtype=np.uint8), None, 0.5, "not an image"),  # two-channel array
        ("IMAGE", None, 2.0, "threshold must be between 0 and 1"),
        ("IMAGE", "/no/such/dir", 0.5, "neither a local directory"),
    ],
)
def test_errors_are_shown_not_raised_as_tracebacks(state, tiny_detr_dir, image, model, threshold, message):
    image = data.camera() if isinstance(image, str) else image
    with pytest.raises(gr.Error, match=message):
        detect(state, image, model or str(tiny_detr_dir), threshold, 320)


def test_model_is_loaded_once(state, tiny_detr_dir):
    detect(state, data.camera(), str(tiny_detr_dir), 0.5, 256)
    first = state.models.get(str(tiny_detr_dir))
    detect(state, data.camera(), str(tiny_detr_dir), 0.5, 256)
    assert state.models.get(str(tiny_detr_dir)) is first


def test_detect_api_through_gradio_client(state, tmp_path, tiny_detr_dir):
    """The launched app answers `detect` by its stable API name, as a gradio_client user calls it."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from app.ui import build_app

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    demo = build_app(state)
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        assert "/detect" in client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        annotated, table, status = client.predict(
            handle_file(str(path)), str(tiny_detr_dir), 0.6, 320, api_name="/detect"
        )
        assert Image.open(annotated).size == (512, 512)
        assert table["headers"] == ["query", "label", "score", "x1", "y1", "x2", "y2"]
        assert len(table["data"]) >= 1 and "detections of 12 queries" in status
    finally:
        demo.close()


def test_offline_hub_model_falls_back_to_bundled_with_a_note(state, monkeypatch, tmp_path, tiny_detr_dir):
    import core.loading

    monkeypatch.setattr(core.loading, "BUNDLED_DIR", tiny_detr_dir)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    _, rows, status = detect(state, data.camera(), "facebook/detr-resnet-50", 0.5, 256)
    assert status.startswith("**Note:**") and "facebook/detr-resnet-50" in status and "bundled" in status
    assert "model `bundled`" in status


def test_size_zero_means_the_models_own(state, tiny_detr_dir):
    _, _, status = detect(state, data.camera(), str(tiny_detr_dir), 0.5, 0)
    assert "shortest edge 800 px" in status  # the tiny model keeps DETR's default
    _, _, status = detect(state, data.camera(), str(tiny_detr_dir), 0.5, 256)
    assert "shortest edge 256 px" in status


def test_class_filter_keeps_only_the_chosen_classes(state, tiny_detr_dir):
    _, everything, _ = detect(state, data.astronaut(), str(tiny_detr_dir), 0.3, 256)
    present = sorted({row[1] for row in everything})
    _, only, _ = detect(state, data.astronaut(), str(tiny_detr_dir), 0.3, 256, [present[0]])
    assert only and {row[1] for row in only} == {present[0]}
    assert [row for row in everything if row[1] == present[0]] == only


def test_several_images_at_once(state, tiny_detr_dir, tmp_path):
    from PIL import Image

    from app.detect import detect_batch

    paths = []
    for name, image in [("a.png", data.astronaut()), ("b.png", data.coffee())]:
        paths.append(str(tmp_path / name))
        Image.fromarray(image).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"no image here")
    gallery, rows, status = detect_batch(state, paths + [str(tmp_path / "bad.png")], str(tiny_detr_dir), 0.5, 256)
    assert [caption.split(":")[0] for _, caption in gallery] == ["a.png", "b.png"]
    assert gallery[0][0].shape == data.astronaut().shape
    assert {row[0] for row in rows} <= {"a.png", "b.png"} and rows
    # each image's rows equal what the single-image handler gives
    _, single, _ = detect(state, data.coffee(), str(tiny_detr_dir), 0.5, 256)
    assert [row[1:] for row in rows if row[0] == "b.png"] == single
    assert "2 images" in status and "bad.png" in status


def test_the_app_runs_the_configured_engine_once_it_is_ready(state, calm_model_dir):
    """AppConfig.engine: the model is exported in the background on first load; from then on Detect
    runs the engine, says so, and finds what PyTorch finds."""
    from conftest import state_with

    image = data.coffee()
    _, with_torch, status = detect(state, image, str(calm_model_dir), 0.3, 160)
    assert "(torch)" in status
    engined = state_with(state, engine="onnxruntime")
    engined.models.get(str(calm_model_dir))
    engined.models.wait_for_engine(str(calm_model_dir), timeout=300)
    _, rows, status = detect(engined, image, str(calm_model_dir), 0.3, 160)
    assert "(onnxruntime)" in status and "Note" not in status
    assert [row[:2] for row in rows] == [row[:2] for row in with_torch]  # the same queries, the same labels
    assert np.allclose([row[2] for row in rows], [row[2] for row in with_torch], atol=2e-3)

"""The Queries tab's handlers, called directly: every query, the grid, attention per layer/head, caching."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from skimage import data

import app.queries as queries
from app.render import GRID_CELL, grid_query_at, grid_shape, query_grid


def test_every_query_is_listed_with_its_parts(state, tiny_model_dir):
    image = data.coffee()
    key, rows, grid, layers, heads, status = queries.run_queries(state, image, str(tiny_model_dir), 256, 0.5)
    assert [row[0] for row in rows] == list(range(12))  # all 12 queries, in index order
    for query, label, score, no_object, x1, y1, x2, y2, passed in rows:
        assert label in ["circle", "square", "triangle"] and 0 <= score <= 1 and 0 <= no_object <= 1
        assert 0 <= x1 <= x2 <= image.shape[1] and 0 <= y1 <= y2 <= image.shape[0]
        assert passed == ("yes" if score >= 0.5 else "no")
    assert grid.shape == (3 * GRID_CELL, 4 * GRID_CELL, 3)
    assert layers["choices"] == ["0", "1"] and layers["value"] == "1"  # the last decoder layer by default
    assert heads["choices"] == ["mean", "0", "1"]
    assert "12 queries" in status


def test_selecting_queries_layers_and_heads_never_reruns_the_model(state, tiny_detr_dir, monkeypatch):
    image = data.astronaut()
    key, *_ = queries.run_queries(state, image, str(tiny_detr_dir), 256, 0.5)
    calls = []
    monkeypatch.setattr(state.gpu, "predict", lambda *a, **k: calls.append(1))  # would break if called
    overlays = {}
    for query, layer, head in [(0, "1", "mean"), (5, "1", "mean"), (5, "0", "mean"), (5, "1", "0"), (5, "1", "1")]:
        overlay, grid, details = queries.query_attention(state, key, query, layer, head, 0.5)
        assert overlay.shape == image.shape and overlay.dtype == np.uint8
        assert f"Query {query}" in details and f"layer {layer}" in details
        overlays[(query, layer, head)] = overlay
    assert not calls
    # Different queries, layers and heads show different maps.
    assert len({o.tobytes() for o in overlays.values()}) == len(overlays)
    # Asking again for the same image and model reuses the cache too.
    queries.run_queries(state, image, str(tiny_detr_dir), 256, 0.5)
    assert not calls


def test_selected_query_is_framed_in_the_grid(state, tiny_detr_dir):
    key, _, plain, *_ = queries.run_queries(state, data.coffee(), str(tiny_detr_dir), 256, 0.5)
    _, framed, _ = queries.query_attention(state, key, 6, None, "mean", 0.5)
    rows, cols = grid_shape(12)
    row, col = divmod(6, cols)
    changed = np.argwhere((framed != plain).any(-1))
    assert changed.size and (changed[:, 0] // GRID_CELL == row).all() and (changed[:, 1] // GRID_CELL == col).all()


@pytest.mark.parametrize("n, shape", [(100, (10, 10)), (300, (15, 20)), (12, (3, 4)), (1, (1, 1)), (7, (3, 3))])
def test_grid_shape(n, shape):
    rows, cols = grid_shape(n)
    assert (rows, cols) == shape and rows * cols >= n


def test_grid_click_maps_back_to_its_query():
    for n in (12, 100, 300):
        rows, cols = grid_shape(n)
        for query in (0, n // 2, n - 1):
            row, col = divmod(query, cols)
            assert grid_query_at(n, col * GRID_CELL + 5, row * GRID_CELL + 30) == query
        assert grid_query_at(n, cols * GRID_CELL + 1, 0) is None


def test_grid_colours_follow_class_and_score(state, tiny_detr_dir):
    key, *_ = queries.run_queries(state, data.coffee(), str(tiny_detr_dir), 256, 0.5)
    outputs = state.queries.get(key).outputs
    grid = query_grid(outputs, 0.5)
    centre = lambda q: grid[(q // 4) * GRID_CELL + GRID_CELL // 2, (q % 4) * GRID_CELL + GRID_CELL - 8].astype(int)
    best, worst = int(np.argmax(outputs.scores)), int(np.argmin(outputs.scores))
    assert centre(best).sum() > centre(worst).sum()  # brighter for the higher score


@pytest.mark.parametrize("call, message", [
    (lambda state, key: queries.query_attention(state, key, 99), "does not exist"),
    (lambda state, key: queries.query_attention(state, key, "abc"), "Pick a query"),
    (lambda state, key: queries.query_attention(state, key, 0, "7"), "layer 7"),
    (lambda state, key: queries.query_attention(state, key, 0, None, "5"), "head 5"),
    (lambda state, key: queries.query_attention(state, "evicted-key", 0), "no longer cached"),
])
def test_bad_selections_are_clear_errors(state, tiny_detr_dir, call, message):
    key, *_ = queries.run_queries(state, data.coffee(), str(tiny_detr_dir), 256, 0.5)
    with pytest.raises(gr.Error, match=message):
        call(state, key)


def test_missing_image_is_a_clear_error(state, tiny_detr_dir):
    with pytest.raises(gr.Error, match="Upload an image"):
        queries.run_queries(state, None, str(tiny_detr_dir), 256, 0.5)


def test_slot_plot_over_images(state, tiny_detr_dir, tmp_path):
    from PIL import Image

    paths = []
    for i, image in enumerate([data.coffee(), data.astronaut(), data.chelsea()]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    figure = queries.slot_specialization(state, [str(p) for p in paths], str(tiny_detr_dir), "0-3, 7", 128)
    titled = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titled == ["slot 0", "slot 1", "slot 2", "slot 3", "slot 7"]
    assert all(len(ax.collections[0].get_offsets()) == 3 for ax in figure.axes if ax.get_title())  # one dot per image
    assert queries.parse_slots("", 12) == list(range(12))
    with pytest.raises(gr.Error, match="between 0 and 11"):
        queries.parse_slots("5-20", 12)


def test_small_images_are_enlarged_for_the_overlay(state, tiny_detr_dir):
    small = data.coffee()[::6, ::6]  # 67 x 100
    key, *_ = queries.run_queries(state, small, str(tiny_detr_dir), 64, 0.5)
    overlay, _, _ = queries.query_attention(state, key, 0)
    assert max(overlay.shape[:2]) == 512
    assert overlay.shape[0] / overlay.shape[1] == pytest.approx(small.shape[0] / small.shape[1], abs=0.01)


def test_a_query_dropped_as_a_duplicate_says_which_it_repeats():
    from core.inference import QueryOutputs

    boxes = np.array([[0, 0, 50, 50], [0, 0, 50, 45], [100, 100, 150, 150]], dtype=np.float32)
    probs = np.array([[0.8, 0.0], [0.9, 0.0], [0.0, 0.2]])
    outputs = QueryOutputs(probs=probs, boxes=boxes, label_ids=probs.argmax(1), scores=probs.max(1),
                           no_object=1 - probs.max(1), labels=["star", "circle"], image_size=(200, 200),
                           duplicate_iou=0.7)
    assert [row[-1] for row in queries.query_rows(outputs, 0.5)] == ["duplicate of 1", "yes", "no"]


def test_a_version_with_the_test_time_flip_says_so_and_names_each_query_s_partner(state, tiny_detr_dir, tmp_path):
    import json
    import shutil

    from app.detect import detect

    directory = tmp_path / "flipping"
    shutil.copytree(tiny_detr_dir, directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "test_time_flip": True, "duplicate_iou": 0.7}))
    image = data.coffee()[::4, ::4]
    *_, status = detect(state, image, str(directory), 0.5, 64)
    assert "duplicates above IoU 0.7 removed · each image also run mirrored and fused (test-time flip)" in status
    key, *_, status = queries.run_queries(state, image, str(directory), 64, 0.5)
    assert "test-time flip" in status
    outputs = state.queries.get(key).outputs
    assert outputs.flip_partner is not None and len(outputs.flip_partner) == outputs.num_queries
    for query in range(outputs.num_queries):
        _, _, details = queries.query_attention(state, key, query)
        partner = int(outputs.flip_partner[query])
        assert (f"fused with query {partner} of the mirrored image" if partner >= 0
                else "no query of the mirrored image found this object") in details

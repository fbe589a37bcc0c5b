"""The Review tab's handlers against a real FiftyOne dataset: send, edit, save, refuse stale, undo, queue,
promote a query, import, export, evaluate, and the FiftyOne App."""

from __future__ import annotations

import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import app.queries as queries
import app.review as review
from datasets.shapes import generate_sample, write_coco


def shapes_image(seed: int) -> np.ndarray:
    return generate_sample(seed).image


def test_send_edit_save_and_read_back(state, review_store, tiny_detr_dir):
    value, sample_id, revision, status = review.send_to_review(state, shapes_image(0), str(tiny_detr_dir), 0.5, 256)
    assert revision == 0 and "to_review" in status
    item = review_store.get(sample_id)
    shown = value["boxes"]
    assert len(shown) == int((item.predictions.confidence >= 0.5).sum())  # pre-filled above the threshold
    assert all(d.model_version == str(tiny_detr_dir) for d in review_store.dataset[sample_id].predictions.detections)
    # Edit: relabel one box, move it, and add a box with a new class.
    edited = [dict(b) for b in shown[:1]] + [{"xmin": 3, "ymin": 4, "xmax": 40, "ymax": 50, "label": "star"}]
    if len(edited) == 2:
        edited[0].update(label="triangle", xmin=edited[0]["xmin"] + 1)
    value, sample_id, revision, status = review.save_review(state, sample_id, 0, {**value, "boxes": edited}, "ana")
    assert revision == 1 and status.startswith("Saved.") and "reviewed" in status
    assert [b["label"] for b in value["boxes"]] == [b["label"] for b in edited]  # read back from the dataset
    sample = review_store.dataset[sample_id]
    assert [d.label for d in sample.ground_truth.detections] == [b["label"] for b in edited]
    assert sample.review.reviewer == "ana" and "reviewed" in sample.tags


def test_stale_save_is_refused_and_keeps_the_winner(state, review_store, tiny_detr_dir):
    value, sample_id, revision, _ = review.send_to_review(state, shapes_image(1), str(tiny_detr_dir), 0.5, 256)
    first = {**value, "boxes": [{"xmin": 1, "ymin": 1, "xmax": 20, "ymax": 20, "label": "circle"}]}
    second = {**value, "boxes": [{"xmin": 2, "ymin": 2, "xmax": 30, "ymax": 30, "label": "square"}]}
    review.save_review(state, sample_id, revision, first, "ana")
    with pytest.raises(gr.Error, match="saved by ana"):
        review.save_review(state, sample_id, revision, second, "bob")
    assert [d.label for d in review_store.dataset[sample_id].ground_truth.detections] == ["circle"]
    # Undo restores the state before ana's save.
    value, _, revision, status = review.undo_review(state, sample_id, 1, "ana")
    assert revision == 2 and "to_review" in status
    assert review_store.get(sample_id).ground_truth is None


@pytest.mark.parametrize("boxes, message", [
    ([{"xmin": 10, "ymin": 10, "xmax": 10, "ymax": 40, "label": "circle"}], "zero or negative size"),
    ([{"xmin": 1, "ymin": 1, "xmax": 20, "ymax": 20, "label": ""}], "empty label"),
    ([{"xmin": 1, "ymin": 1, "label": "circle"}], "missing a coordinate"),
])
def test_bad_edits_are_refused_without_saving(state, review_store, tiny_detr_dir, boxes, message):
    value, sample_id, revision, _ = review.send_to_review(state, shapes_image(2), str(tiny_detr_dir), 0.5, 256)
    with pytest.raises(gr.Error, match=message):
        review.save_review(state, sample_id, revision, {**value, "boxes": boxes}, "ana")
    assert review_store.get(sample_id).revision == 0 and review_store.get(sample_id).ground_truth is None


def test_html_label_is_stored_as_text(state, review_store, tiny_detr_dir):
    value, sample_id, revision, _ = review.send_to_review(state, shapes_image(3), str(tiny_detr_dir), 0.5, 256)
    label = "<img src=x onerror=alert(1)>"
    review.save_review(state, sample_id, revision, {**value, "boxes": [{"xmin": 1, "ymin": 1, "xmax": 9, "ymax": 9,
                                                                  "label": label}]}, "<b>eve</b>")
    value, *_ , status = review.load_sample(state, sample_id)
    assert value["boxes"][0]["label"] == label
    assert "<b>" not in status and "&lt;b&gt;eve" in status  # reviewer name escaped in the status line


def test_queue_and_counts(state, review_store, tiny_detr_dir):
    ids = [review.send_to_review(state, shapes_image(10 + i), str(tiny_detr_dir), 0.5, 256)[1] for i in range(3)]
    order = review_store.queue().values("id")
    _, first, _, _ = review.next_to_review(state, None)
    assert first == order[0]
    _, second, _, _ = review.next_to_review(state, first)
    assert second == order[1]
    review.save_review(state, first, 0, {"image": "x", "boxes": []}, "ana")  # an image with nothing in it is a review too
    assert "1 reviewed, 2 to review" in review.review_counts(state)
    assert set(ids) == set(review_store.dataset.values("id"))


def test_promote_a_below_threshold_query(state, review_store, tiny_detr_dir):
    image = shapes_image(4)
    _, rows, *_ = queries.run_queries(state, image, str(tiny_detr_dir), 256, 0.5)
    threshold = float(np.median([row[2] for row in rows]))  # about half the queries pass
    key, rows, *_ = queries.run_queries(state, image, str(tiny_detr_dir), 256, threshold)
    low = next(row for row in rows if row[-1] == "no")
    value, sample_id, revision, status = review.promote_query(state, key, low[0], None, None, threshold)
    assert f"Added query {low[0]}" in status
    added = value["boxes"][-1]
    assert added["label"] == low[1]
    assert [added["xmin"], added["ymin"], added["xmax"], added["ymax"]] == [round(v) for v in low[4:8]]
    # Promoting another query onto the open editor appends to it; Save keeps both.
    other = next(row for row in rows if row[-1] == "no" and row[0] != low[0])
    value, same_id, revision, _ = review.promote_query(state, key, other[0], sample_id, value, threshold)
    assert same_id == sample_id and len(value["boxes"]) == len([r for r in rows if r[-1] == "yes"]) + 2
    review.save_review(state, sample_id, revision, value, "ana")
    assert len(review_store.dataset[sample_id].ground_truth.detections) == len(value["boxes"])


def test_import_folder_reports_unreadable_files(state, review_store, tiny_detr_dir, tmp_path):
    folder = state.import_root / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(shapes_image(20)).save(folder / "a.png")
    Image.fromarray(shapes_image(21)).save(folder / "sub" / "b.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    report = review.import_folder(state, "photos", str(tiny_detr_dir), 0.5, 256)  # relative to DATA/imports
    assert "Imported 2 of 3 images" in report and "broken.png" in report
    assert len(review_store.dataset) == 2


def test_import_coco_checks_everything_first(state, review_store, tiny_detr_dir, tmp_path):
    directory = state.import_root / "coco"
    write_coco(directory, count=3, first_seed=30)
    path = directory / "annotations.json"
    document = json.loads(path.read_text())
    good = json.dumps(document)
    document["annotations"][-1]["category_id"] = 42
    path.write_text(json.dumps(document))
    with pytest.raises(gr.Error, match="category ids \\[42\\]"):
        review.import_coco(state, str(path), "", str(tiny_detr_dir), 0.5, 256)
    assert len(review_store.dataset) == 0  # nothing half-imported
    path.write_text(good)
    report = review.import_coco(state, str(path), "", str(tiny_detr_dir), 0.5, 256)
    assert "Imported 3 images" in report
    sample = review_store.dataset.first()
    assert sample.review.status == "imported" and len(sample.ground_truth.detections) >= 1
    # Imported truth pre-fills the editor instead of predictions.
    value, *_ = review.load_sample(state, sample.id)
    assert [b["label"] for b in value["boxes"]] == [d.label for d in sample.ground_truth.detections]


def test_export_and_evaluate(state, review_store, tiny_detr_dir, tmp_path):
    for seed in (40, 41):
        value, sample_id, revision, _ = review.send_to_review(state, shapes_image(seed), str(tiny_detr_dir), 0.05, 256)
        item = review_store.get(sample_id)
        # Ground truth = the predictions themselves: COCO AP must be 1 for every class present.
        truth = [{"xmin": float(x0), "ymin": float(y0), "xmax": float(x1), "ymax": float(y1), "label": str(name)}
                 for (x0, y0, x1, y1), name in zip(item.predictions.xyxy, item.predictions.data["class_name"])]
        review.save_review(state, sample_id, revision, {**value, "boxes": truth}, "ana")
    summary, rows, figure = review.evaluate_reviewed(state)
    assert "**1.000**" in summary
    assert all(ap == 1.0 for _, ap in rows if ap != "no data")
    assert figure.axes[0].get_lines()
    assert "eval_tp" in review_store.dataset.get_field_schema()  # per-object results stay for the FiftyOne App
    report = review.export_coco(state, "out")  # relative to DATA/exports
    document = json.loads((state.export_root / "out" / "labels.json").read_text())
    assert "Exported 2 reviewed samples" in report and min(c["id"] for c in document["categories"]) == 1


def test_evaluate_needs_reviewed_samples(state, review_store):
    with pytest.raises(gr.Error, match="No reviewed samples"):
        review.evaluate_reviewed(state)


def test_open_in_fiftyone_links_the_mounted_app(state, review_store):
    message = review.open_fiftyone(state)
    assert f"(/fiftyone/datasets/{review_store.dataset.name}?proxy=/fiftyone/)" in message


def test_saved_views_per_review_state(state, review_store, tiny_detr_dir):
    """to-review and reviewed always; disagreements once an evaluation marked misses or false alarms."""
    for seed in (42, 43):
        review.send_to_review(state, shapes_image(seed), str(tiny_detr_dir), 0.05, 256)
    value, sample_id, revision, _ = review.load_sample(state, review_store.next_to_review())
    # A truth box nowhere near any prediction: a miss (eval_fn) for sure.
    review.save_review(state, sample_id, revision, {**value, "boxes": [{"xmin": 0, "ymin": 0, "xmax": 3, "ymax": 3,
                                                               "label": "circle"}]}, "ana")
    links, frame = review.fiftyone_frame(state)
    assert review_store.dataset.list_saved_views() == ["to-review", "reviewed"]
    assert len(review_store.dataset.load_saved_view("reviewed")) == 1
    assert len(review_store.dataset.load_saved_view("to-review")) == 1
    assert "proxy=/fiftyone/&amp;polling=true" in frame and "&view=reviewed" in links
    review.evaluate_reviewed(state)
    assert "disagreements" in review_store.dataset.list_saved_views()
    assert review_store.dataset.load_saved_view("disagreements").values("id") == [sample_id]


def test_import_coco_refuses_a_box_outside_any_image_before_writing(state, review_store, tiny_detr_dir, tmp_path):
    """The store's box checks run on every image first: a bad box in the last image imports nothing."""
    directory = state.import_root / "coco"
    write_coco(directory, count=3, first_seed=60)
    path = directory / "annotations.json"
    document = json.loads(path.read_text())
    document["annotations"][-1]["bbox"] = [-40.0, 5.0, 30.0, 30.0]  # starts 40 px left of the image
    path.write_text(json.dumps(document))
    with pytest.raises(gr.Error, match="lies outside .* nothing was imported"):
        review.import_coco(state, str(path), "", str(tiny_detr_dir), 0.5, 256)
    assert len(review_store.dataset) == 0

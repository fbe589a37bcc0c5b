"""COCO evaluation: ground truth fed back scores AP 1.0; the CLI runs a model on a COCO directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.evaluate import MAX_DETECTIONS, coco_metrics, load_coco, main, to_coco_results
from core.inference import QueryOutputs
from datasets.shapes import write_coco


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes_coco")
    write_coco(directory, 12, first_seed=500)
    return directory


def ground_truth_as_predictions(document: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in document["annotations"]]


def test_ground_truth_as_predictions_scores_one(shapes_coco):
    document, _ = load_coco(shapes_coco)
    metrics = coco_metrics(document, ground_truth_as_predictions(document))
    assert metrics.AP == pytest.approx(1.0) and metrics.AP50 == pytest.approx(1.0)
    assert set(metrics.per_class) == {"circle", "square", "triangle"}
    assert all(value == pytest.approx(1.0) for value in metrics.per_class.values())


def test_shifted_boxes_score_lower(shapes_coco):
    document, _ = load_coco(shapes_coco)
    shifted = ground_truth_as_predictions(document)
    for result in shifted:
        x, y, w, h = result["bbox"]
        result["bbox"] = [x + 0.3 * w, y, w, h]  # IoU about 0.54: passes AP50, fails AP75
    metrics = coco_metrics(document, shifted)
    assert metrics.AP50 == pytest.approx(1.0) and metrics.AP75 == pytest.approx(0.0) and 0 < metrics.AP < 0.5


def test_wrong_class_scores_zero(shapes_coco):
    document, _ = load_coco(shapes_coco)
    wrong = ground_truth_as_predictions(document)
    for result in wrong:
        result["category_id"] = result["category_id"] % 3 + 1
    assert coco_metrics(document, wrong).AP == 0.0
    assert coco_metrics(document, []).AP == 0.0  # no detections at all


def test_cli_evaluates_a_model(shapes_coco, tiny_detr_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["--model", str(tiny_detr_dir), "--data", str(shapes_coco), "--size", "192", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "AP circle" in printed
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["images"] == 12


def test_cli_test_time_flip_overrides_the_model_s_config(shapes_coco, tmp_path):
    runs = {}
    for flag in ("none", "true", "false"):  # none: as the model's config.json says (the bundled model: one pass)
        out = tmp_path / f"{flag}.json"
        assert main(["--model", "bundled", "--data", str(shapes_coco), "--json", str(out), "--test-time-flip", flag]) == 0
        runs[flag] = json.loads(out.read_text())
    assert runs["none"] == runs["false"]
    # the mirrored pass moves boxes and halves the queries it does not confirm: the scores change
    assert runs["true"]["per_class"] != runs["false"]["per_class"] and runs["true"]["AP"] > 0.3


def test_cli_refuses_a_duplicate_iou_out_of_range(tmp_path, tiny_detr_dir, capsys):
    (tmp_path / "annotations.json").write_text('{"images": [], "categories": [{"id": 1, "name": "circle"}]}')
    assert main(["--model", str(tiny_detr_dir), "--data", str(tmp_path), "--duplicate-iou", "1"]) == 2
    assert "duplicate_iou must be at least 0 and below 1" in capsys.readouterr().err


def test_cli_bad_data(tmp_path, tiny_detr_dir, capsys):
    (tmp_path / "annotations.json").write_text("{not json")
    assert main(["--model", str(tiny_detr_dir), "--data", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["--model", str(tiny_detr_dir), "--data", str(tmp_path / "nothing")]) == 2


def query_outputs(probs: np.ndarray, labels: list[str]) -> QueryOutputs:
    """Hand-made outputs: query i's box is [10 i, 0, 10 i + 5, 5]."""
    real = probs[:, :len(labels)]
    boxes = np.array([[10.0 * i, 0, 10.0 * i + 5, 5] for i in range(len(probs))])
    return QueryOutputs(probs=probs, boxes=boxes, label_ids=real.argmax(1), scores=real.max(1),
                        no_object=np.zeros(len(probs)), labels=labels, image_size=(640, 480))


def test_sigmoid_models_are_scored_on_their_best_query_class_pairs():
    # Conditional DETR's reference evaluation: the image's best (query, class) pairs, so query 0's second
    # class (star, 0.6) is a detection too, ranked above query 1's only class.
    probs = np.array([[0.1, 0.7, 0.6], [0.5, 0.0, 0.0]])
    results = to_coco_results(7, query_outputs(probs, ["circle", "triangle", "star"]),
                              {"circle": 1, "triangle": 2, "star": 3})
    assert [(r["category_id"], r["score"], r["bbox"][0]) for r in results] == [
        (2, 0.7, 0.0), (3, 0.6, 0.0), (1, 0.5, 10.0), (1, 0.1, 0.0), (2, 0.0, 10.0), (3, 0.0, 10.0)]
    # classes the dataset lacks are dropped before choosing; at most MAX_DETECTIONS pairs per image
    only_circle = to_coco_results(7, query_outputs(probs, ["circle", "triangle", "star"]), {"circle": 1})
    assert [(r["score"], r["bbox"][0]) for r in only_circle] == [(0.5, 10.0), (0.1, 0.0)]
    many = query_outputs(np.random.default_rng(0).random((100, 4)), ["a", "b", "c", "d"])
    assert len(to_coco_results(1, many, {"a": 1, "b": 2, "c": 3, "d": 4})) == MAX_DETECTIONS


def test_softmax_models_are_scored_on_each_querys_top_class():
    # DETR's reference evaluation: every query once, with its best real class (last column: no object).
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    results = to_coco_results(3, query_outputs(probs, ["circle", "star"]), {"circle": 1, "star": 2})
    assert [(r["category_id"], r["score"], r["bbox"][0]) for r in results] == [(1, 0.5, 0.0), (2, 0.2, 10.0)]
    assert [r["category_id"] for r in to_coco_results(3, query_outputs(probs, ["circle", "star"]), {"star": 2})] == [2]


def test_duplicate_removal_drops_the_lower_of_two_boxes_of_one_class():
    # queries 0 and 1: stars on almost the same box (IoU 0.8); query 2: a triangle on it; query 3: a star elsewhere
    probs = np.array([[0.0, 0.1, 0.9], [0.0, 0.0, 0.6], [0.0, 0.5, 0.0], [0.0, 0.0, 0.4]])
    outputs = query_outputs(probs, ["circle", "triangle", "star"])
    outputs.boxes[1] = [0.0, 0.0, 5.0, 4.0]  # query 0's box is [0, 0, 5, 5]
    outputs.boxes[2] = [0.0, 0.0, 5.0, 5.0]
    categories = {"circle": 1, "triangle": 2, "star": 3}
    stars = lambda results: [(r["score"], r["bbox"][0]) for r in results if r["category_id"] == 3]  # noqa: E731
    assert stars(to_coco_results(1, outputs, categories))[:2] == [(0.9, 0.0), (0.6, 0.0)]  # every query stands
    outputs.duplicate_iou = 0.7
    removed = to_coco_results(1, outputs, categories)
    assert stars(removed)[:2] == [(0.9, 0.0), (0.4, 30.0)]  # query 1's star is gone
    # another class on the same box stays (query 2's triangle); query 0's triangle (0.1) is a duplicate of it
    triangles = [(r["score"], r["bbox"][0]) for r in removed if r["category_id"] == 2]
    assert triangles[0] == (0.5, 0.0) and (0.1, 0.0) not in triangles
    outputs.duplicate_iou = 0.85  # above the pair's overlap: both stand
    assert stars(to_coco_results(1, outputs, categories))[:2] == [(0.9, 0.0), (0.6, 0.0)]
    softmax = query_outputs(np.column_stack([probs, 1 - probs.max(1)]), ["circle", "triangle", "star"])
    softmax.boxes[:] = outputs.boxes
    softmax.duplicate_iou = 0.7  # a softmax model: each query's top class, duplicates of it dropped alike
    assert [(r["category_id"], r["score"]) for r in to_coco_results(1, softmax, categories)] == [
        (3, 0.9), (2, 0.5), (3, 0.4)]

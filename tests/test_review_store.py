"""The FiftyOne review store: schema, content-hash media, compare-and-set saves, undo, the queue, COCO I/O.

A real MongoDB (FiftyOne's own, in a throwaway directory) sits behind every test.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image

from datasets.coco import CocoError, export_reviewed, list_images, read_coco
from datasets.review import REVIEWED_TAG, ReviewError, StaleRevisionError, clean_label
from datasets.shapes import generate_sample, write_coco

LABELS = ["circle", "square", "triangle"]


def boxes(*items, scores=None) -> sv.Detections:
    """``boxes((x0, y0, x1, y1, "label"), ...)`` as pixel `sv.Detections`."""
    xyxy = np.array([item[:4] for item in items], dtype=np.float32).reshape(-1, 4)
    names = np.array([item[4] for item in items], dtype=object)
    return sv.Detections(
        xyxy=xyxy, confidence=None if scores is None else np.array(scores, dtype=np.float32),
        data={"class_name": names, "query_index": np.arange(len(items))},
    )


def picture(seed: int = 0) -> np.ndarray:
    return generate_sample(seed).image


def test_add_copies_the_image_under_its_content_hash(review_store, tmp_path):
    image = picture(0)
    source = tmp_path / "user" / "holiday photo.png"
    source.parent.mkdir()
    Image.fromarray(image).save(source)
    sample_id = review_store.add_image(image, boxes((5, 5, 40, 40, "circle"), scores=[0.8]), "bundled", LABELS)
    item = review_store.get(sample_id)
    assert "holiday" not in item.filepath and str(review_store.media_dir) in item.filepath
    assert np.array_equal(np.asarray(Image.open(item.filepath)), image)  # lossless copy
    assert (item.width, item.height) == (image.shape[1], image.shape[0])
    sample = review_store.dataset[sample_id]
    detection = sample.predictions.detections[0]
    assert detection.confidence == pytest.approx(0.8) and detection.query_index == 0
    assert detection.model_version == "bundled"
    assert sample.review.status == "to_review" and sample.review.revision == 0
    assert review_store.labels == LABELS
    # The same picture again is the same sample, with the newer predictions.
    again = review_store.add_image(image, boxes((1, 1, 9, 9, "square"), scores=[0.3]), "v2", LABELS)
    assert again == sample_id and len(review_store.dataset) == 1
    assert review_store.get(sample_id).predictions.data["class_name"].tolist() == ["square"]


def test_save_reads_back_and_extends_the_label_space(review_store):
    sample_id = review_store.add_image(picture(1), boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    revision = review_store.save_review(sample_id, boxes((10, 12, 50, 60, "star"), (0, 0, 20, 20, "circle")), 0, "ana")
    assert revision == 1
    item = review_store.get(sample_id)
    assert item.status == "reviewed" and item.reviewer == "ana" and item.revision == 1 and item.time is not None
    assert item.ground_truth.data["class_name"].tolist() == ["star", "circle"]
    np.testing.assert_allclose(item.ground_truth.xyxy, [[10, 12, 50, 60], [0, 0, 20, 20]], atol=1e-3)
    assert review_store.labels == LABELS + ["star"]  # new class appended, old ids unchanged
    assert REVIEWED_TAG in review_store.dataset[sample_id].tags
    assert review_store.counts() == {"reviewed": 1, "to_review": 0, "total": 1}


def test_two_saves_against_one_revision_give_one_success_and_one_refusal(review_store):
    sample_id = review_store.add_image(picture(2), boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    results = {}

    def save(name, label):
        try:
            results[name] = review_store.save_review(sample_id, boxes((1, 1, 30, 30, label)), 0, name)
        except StaleRevisionError as error:
            results[name] = error

    threads = [threading.Thread(target=save, args=("ana", "square")), threading.Thread(target=save, args=("bob", "triangle"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, result in results.items() if result == 1]
    losers = [name for name, result in results.items() if isinstance(result, StaleRevisionError)]
    assert len(winners) == 1 and len(losers) == 1
    item = review_store.get(sample_id)
    assert item.revision == 1 and item.reviewer == winners[0]
    assert item.ground_truth.data["class_name"].tolist() == ["square" if winners[0] == "ana" else "triangle"]
    assert "Nothing was overwritten" in str(results[losers[0]])


def test_undo_walks_back_through_revisions(review_store):
    sample_id = review_store.add_image(picture(3), boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    review_store.save_review(sample_id, boxes((1, 1, 30, 30, "square")), 0, "ana")
    review_store.save_review(sample_id, boxes((2, 2, 31, 31, "triangle")), 1, "bob")
    assert review_store.undo(sample_id, 2, "ana") == 3
    item = review_store.get(sample_id)
    assert item.ground_truth.data["class_name"].tolist() == ["square"] and item.status == "reviewed"
    review_store.undo(sample_id, 3, "ana")
    item = review_store.get(sample_id)
    assert item.ground_truth is None and item.status == "to_review" and item.revision == 4
    assert REVIEWED_TAG not in review_store.dataset[sample_id].tags
    with pytest.raises(ReviewError, match="nothing to undo"):
        review_store.undo(sample_id, 4, "ana")
    with pytest.raises(StaleRevisionError):  # undo is compare-and-set too
        review_store.save_review(sample_id, boxes((1, 1, 5, 5, "circle")), 3, "late")


@pytest.mark.parametrize("bad, message", [
    (boxes((10, 10, 10, 30, "circle")), "zero or negative size"),      # zero width
    (boxes((30, 10, 10, 30, "circle")), "zero or negative size"),      # inverted
    (boxes((-50, 1, 5, 5, "circle")), "outside"),
    (boxes((0, 0, 5000, 20, "circle")), "outside"),
    (boxes((0, 0, 10, 10, "   ")), "empty label"),
    (boxes((0, 0, 10, 10, "x" * 65)), "longer than"),
    (boxes((0, 0, 10, 10, "bad\x00name")), "control characters"),
])
def test_bad_boxes_and_labels_are_refused_and_nothing_changes(review_store, bad, message):
    sample_id = review_store.add_image(picture(4), boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    review_store.save_review(sample_id, boxes((1, 1, 30, 30, "square")), 0, "ana")
    with pytest.raises(ReviewError, match=message):
        review_store.save_review(sample_id, bad, 1, "bob")
    item = review_store.get(sample_id)
    assert item.revision == 1 and item.ground_truth.data["class_name"].tolist() == ["square"]


def test_html_in_labels_is_kept_as_text():
    assert clean_label("  <b>big</b>   dog ") == "<b>big</b> dog"


def test_unknown_sample_is_a_clear_error(review_store):
    with pytest.raises(ReviewError, match="no sample"):
        review_store.get("not-an-id")
    with pytest.raises(ReviewError, match="no sample"):
        review_store.get("0" * 24)


def test_queue_serves_the_least_confident_unreviewed_first(review_store):
    ids = [review_store.add_image(picture(10 + i), boxes((5, 5, 40, 40, "circle"), scores=[score]), "m", LABELS)
           for i, score in enumerate([0.9, 0.2, 0.6])]
    empty = review_store.add_image(picture(20), sv.Detections.empty(), "m", LABELS)  # nothing found: most uncertain
    assert review_store.next_to_review() == empty
    review_store.save_review(empty, boxes((1, 1, 9, 9, "circle")), 0, "ana")
    assert review_store.next_to_review() == ids[1]
    assert review_store.next_to_review(skip=[ids[1]]) == ids[2]
    assert review_store.counts() == {"reviewed": 1, "to_review": 3, "total": 4}


def test_coco_round_trip_with_category_ids_from_one(review_store, tmp_path):
    image = picture(5)
    sample_id = review_store.add_image(image, boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    review_store.save_review(sample_id, boxes((10, 12, 50, 60, "triangle"), (3, 4, 23, 34, "star")), 0, "ana")
    labels_file = export_reviewed(review_store.reviewed_view(), tmp_path / "export", review_store.labels)
    document = json.loads(labels_file.read_text())
    assert [c["id"] for c in document["categories"]] == [1, 2, 3, 4]
    assert [c["name"] for c in document["categories"]] == LABELS + ["star"]
    labels, images = read_coco(labels_file, tmp_path / "export" / "data")
    assert labels == LABELS + ["star"] and len(images) == 1
    truth = images[0].ground_truth
    assert sorted(truth.data["class_name"].tolist()) == ["star", "triangle"]
    order = np.argsort(truth.data["class_name"])
    np.testing.assert_allclose(truth.xyxy[order], [[3, 4, 23, 34], [10, 12, 50, 60]], atol=0.05)
    with pytest.raises(CocoError, match="not empty"):  # never overwrites an earlier export
        export_reviewed(review_store.reviewed_view(), tmp_path / "export", review_store.labels)


def _coco(tmp_path, **changes) -> Path:
    directory = tmp_path / "coco"
    write_coco(directory, count=2, first_seed=0)
    path = directory / "annotations.json"
    document = json.loads(path.read_text())
    for key, edit in changes.items():
        edit(document)
    path.write_text(json.dumps(document))
    return path


def test_read_coco_accepts_our_own_shapes_export(tmp_path):
    labels, images = read_coco(_coco(tmp_path))
    assert labels == LABELS and len(images) == 2 and all(len(image.ground_truth) for image in images)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(category_id=99), "category ids \\[99\\]"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, 0, 5]), "zero or negative"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, -3, 5]), "zero or negative"),
    (lambda d: d["annotations"][0].update(bbox="1,2,3,4"), "x, y, width, height"),
    (lambda d: d["annotations"][0].update(image_id=12345), "image id 12345"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "leaves the image folder"),
    (lambda d: d["images"][0].update(file_name="/etc/passwd"), "must be relative"),
    (lambda d: d["images"][0].update(file_name="missing.png"), "is not in"),
])
def test_read_coco_refuses_bad_files_with_the_reason(tmp_path, edit, message):
    with pytest.raises(CocoError, match=message):
        read_coco(_coco(tmp_path, edit=edit))


def test_list_images_does_not_follow_links_out_of_the_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(picture(0)).save(folder / "a.png")
    outside = tmp_path / "secret.png"
    Image.fromarray(picture(1)).save(outside)
    assert [p.name for p in list_images(folder)] == ["a.png"]
    (folder / "link.png").symlink_to(outside)
    with pytest.raises(CocoError, match="leaves the image folder"):
        list_images(folder)


SAVE_SCRIPT = """
import sys, numpy as np, supervision as sv
from datasets.review import ReviewStore, StaleRevisionError
store = ReviewStore.open(sys.argv[1], sys.argv[2])
gt = sv.Detections(xyxy=np.array([[1, 1, 30, 30]], dtype=np.float32), data={"class_name": np.array([sys.argv[3]])})
try:
    store.save_review(sys.argv[4], gt, 0, sys.argv[3])
    print("saved")
except StaleRevisionError:
    print("refused")
"""


def test_reviewers_in_two_processes_cannot_both_save_one_revision(review_store, tmp_path):
    import os
    import subprocess
    import sys

    sample_id = review_store.add_image(picture(6), boxes((5, 5, 40, 40, "circle"), scores=[0.9]), "m", LABELS)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    runs = [subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, review_store.dataset.name, str(tmp_path / "data"),
                              name, sample_id], stdout=subprocess.PIPE, text=True, env=env, cwd=root)
            for name in ("square", "triangle")]
    outcomes = [run.communicate(timeout=120)[0].strip().splitlines()[-1] for run in runs]
    assert sorted(outcomes) == ["refused", "saved"]
    winner = ("square", "triangle")[outcomes.index("saved")]
    review_store.dataset.reload()
    item = review_store.get(sample_id)
    assert item.revision == 1 and item.ground_truth.data["class_name"].tolist() == [winner]


def test_the_app_data_directory_holds_the_database_and_media(tmp_path):
    """What `python app.py --data-dir DIR` does before anything else: FiftyOne's files land in DIR."""
    import os
    import subprocess
    import sys

    script = """
import sys, numpy as np, supervision as sv
from pathlib import Path
from datasets.database import configure_fiftyone
from datasets.review import ReviewStore
data = Path(sys.argv[1])
print(configure_fiftyone(data))
store = ReviewStore.open("app-data-test", data)
store.add_image(np.zeros((20, 30, 3), np.uint8), sv.Detections.empty(), "m", ["circle"])
print(len(store.dataset))
"""
    from fiftyone.service.util import find_processes_by_args

    if any(find_processes_by_args(["--51-service", "db", "--multi"])):
        pytest.skip("another FiftyOne database service runs for this user; FiftyOne would attach to it")
    root = Path(__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FIFTYONE_DATABASE")}
    env["PYTHONPATH"] = str(root)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], capture_output=True, text=True,
                         env=env, cwd=root, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "1"
    assert "fiftyone-db" in run.stdout
    assert (tmp_path / "data" / "fiftyone-db" / "WiredTiger").exists()
    assert len(list((tmp_path / "data" / "media").rglob("*.png"))) == 1


def test_a_second_app_on_another_data_directory_is_refused_not_redirected(tmp_path):
    """FiftyOne's local database is one per user; a store must not silently use another directory's."""
    import os
    import subprocess
    import sys

    from fiftyone.service.util import find_processes_by_args

    if any(find_processes_by_args(["--51-service", "db", "--multi"])):
        pytest.skip("another FiftyOne database service runs for this user")
    script = """
import sys
from pathlib import Path
from datasets.database import configure_fiftyone
from datasets.review import ReviewStore, ReviewError
configure_fiftyone(Path(sys.argv[1]))
try:
    ReviewStore.open("attach-test", Path(sys.argv[1]))
    print("opened", flush=True)
except ReviewError as error:
    print("refused:", error, flush=True)
sys.stdin.read()  # stay alive (keeping the database service) until told to stop
"""
    root = Path(__file__).resolve().parents[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("FIFTYONE_DATABASE")}
    env["PYTHONPATH"] = str(root)

    def start(directory):
        return subprocess.Popen([sys.executable, "-c", script, str(directory)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env, cwd=root)

    first = start(tmp_path / "a")
    try:
        assert first.stdout.readline().strip() == "opened"
        second = start(tmp_path / "b")
        out, _ = second.communicate("", timeout=180)
        assert out.startswith("refused:") and str(tmp_path / "a") in out and "FIFTYONE_DATABASE_URI" in out
    finally:
        first.communicate("", timeout=180)

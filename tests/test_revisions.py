"""One guarded write path for the truth (datasets/revisions.py): a save made against what the
reviewer saw never erases anyone else's edit — another reviewer's, a script's through FiftyOne, or
one made in the FiftyOne App through our /fiftyone mount — and every such edit becomes a revision
with who and when, so undo and the history stay whole."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import fiftyone as fo
import numpy as np
import pytest
import supervision as sv

from conftest import state_with
from datasets.labels import StaleRevisionError
from datasets.revisions import OUTSIDE, truth_key
from datasets.shapes import generate_sample


def _boxes(*names_and_boxes) -> sv.Detections:
    names = [name for name, _ in names_and_boxes]
    xyxy = np.array([box for _, box in names_and_boxes], dtype=np.float32).reshape(-1, 4)
    return sv.Detections(xyxy=xyxy, data={"class_name": np.array(names, dtype=object)})


@pytest.fixture
def sample_id(review_store):
    image = generate_sample(5).image
    return review_store.add_image(image, sv.Detections.empty(), model_version="test", labels=["circle", "square"])


def _script_edit(store, sample_id, label="triangle"):
    """What a Python script using FiftyOne does: load the sample, change the truth, save."""
    sample = fo.load_dataset(store.dataset.name)[sample_id]
    sample["ground_truth"] = fo.Detections(detections=[fo.Detection(label=label, bounding_box=[0.1, 0.1, 0.2, 0.2])])
    sample.save()


def test_a_save_against_a_revision_opened_before_a_script_edit_is_refused(review_store, sample_id):
    opened = review_store.get(sample_id).revision
    review_store.save_review(sample_id, _boxes(("circle", (1, 1, 20, 20))), opened, "ana")
    seen_by_bob = review_store.get(sample_id).revision
    _script_edit(review_store, sample_id)
    with pytest.raises(StaleRevisionError, match="outside the Review tab"):
        review_store.save_review(sample_id, _boxes(("square", (5, 5, 30, 30))), seen_by_bob, "bob")
    stored = fo.load_dataset(review_store.dataset.name)[sample_id]
    assert [d.label for d in stored.ground_truth.detections] == ["triangle"]  # the script's edit survived


def test_an_outside_edit_becomes_a_revision_that_undo_reverts(review_store, sample_id):
    review_store.save_review(sample_id, _boxes(("circle", (1, 1, 20, 20))), 0, "ana")
    _script_edit(review_store, sample_id)
    item = review_store.get(sample_id)  # reading adopts the edit
    assert (item.revision, item.reviewer) == (2, OUTSIDE)
    assert list(item.ground_truth.data["class_name"]) == ["triangle"]
    history = fo.load_dataset(review_store.dataset.name)[sample_id].review_history
    assert [entry.revision for entry in history] == [0, 1] and history[-1].reviewer == "ana"
    # a reviewer who opened it after the edit may save; then undo twice walks back through the edit
    review_store.save_review(sample_id, _boxes(("square", (5, 5, 30, 30))), item.revision, "bob")
    review_store.undo(sample_id, 3, "bob")
    assert list(review_store.get(sample_id).ground_truth.data["class_name"]) == ["triangle"]
    review_store.undo(sample_id, 4, "bob")
    assert list(review_store.get(sample_id).ground_truth.data["class_name"]) == ["circle"]


def test_evaluation_attributes_are_not_an_edit(review_store, sample_id):
    """FiftyOne's evaluation writes eval fields into the truth's detections: not an outside edit."""
    review_store.save_review(sample_id, _boxes(("circle", (1, 1, 20, 20))), 0, "ana")
    sample = fo.load_dataset(review_store.dataset.name)[sample_id]
    sample.ground_truth.detections[0]["eval"] = "fn"
    sample.save()
    assert review_store.get(sample_id).revision == 1
    assert review_store.save_review(sample_id, _boxes(("square", (5, 5, 30, 30))), 1, "bob") == 2


def test_a_refused_save_writes_nothing(review_store, sample_id):
    review_store.save_review(sample_id, _boxes(("circle", (1, 1, 20, 20))), 0, "ana")
    before = review_store.dataset._sample_collection.find_one({"_id": review_store.dataset[sample_id]._id})
    with pytest.raises(StaleRevisionError):
        review_store.save_review(sample_id, _boxes(("square", (5, 5, 30, 30))), 0, "bob")  # stale revision
    after = review_store.dataset._sample_collection.find_one({"_id": before["_id"]})
    assert after == before


def test_truth_key_ignores_order_ids_and_extra_attributes():
    a = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0, 0, 1, 1]),
                                  fo.Detection(label="y", bounding_box=[0.5, 0.5, 0.1, 0.1])]).to_dict()
    b = fo.Detections(detections=[fo.Detection(label="y", bounding_box=[0.5, 0.5, 0.1, 0.1], eval="tp"),
                                  fo.Detection(label="x", bounding_box=[0, 0, 1, 1])]).to_dict()
    c = fo.Detections(detections=[fo.Detection(label="x", bounding_box=[0, 0, 1, 0.9])]).to_dict()
    assert truth_key(a) == truth_key(b) != truth_key(c)
    assert truth_key(None) == truth_key({"detections": []}) == ()


def _patch(url: str, store, sample_id: str, label: str) -> int:
    """The FiftyOne App's label edit: PATCH the sample with If-Match = base64(last_modified_at)."""
    sample = fo.load_dataset(store.dataset.name)[sample_id]
    tag = base64.b64encode(sample.last_modified_at.isoformat().encode()).decode()
    body = {"ground_truth": {"_cls": "Detections", "detections": [
        {"_cls": "Detection", "label": label, "bounding_box": [0.2, 0.2, 0.3, 0.3]}]}}
    request = urllib.request.Request(f"{url}/fiftyone/dataset/{store.dataset._doc.id}/sample/{sample_id}",
                                     data=json.dumps(body).encode(), method="PATCH",
                                     headers={"Content-Type": "application/json", "If-Match": tag})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("on_space", [False, True], ids=["local", "space visitor"])
def test_fiftyone_app_edits_through_the_mount(state, review_store, sample_id, on_space):
    """Locally an App edit is stored, becomes a revision 'by ... (FiftyOne App)', and a Review-tab
    save made before it is refused; a visitor of a Space cannot edit at all."""
    from app import review
    from app.ui import build_app, launch

    served = state_with(state, model="bundled", system="spaces", space_id="someone/detr-studio" if on_space else None)
    value, _, opened, _ = review.load_sample(served, sample_id)
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        status = _patch(demo.local_url.rstrip("/"), review_store, sample_id, "star")
    finally:
        demo.close()
    item = review_store.get(sample_id)
    if on_space:
        assert status == 403 and item.revision == opened and item.ground_truth is None
        return
    assert status == 200
    assert item.revision == opened + 1 and item.reviewer.endswith("(FiftyOne App)")
    assert list(item.ground_truth.data["class_name"]) == ["star"]
    with pytest.raises(Exception, match="outside the Review tab|saved by"):
        review.save_review(served, sample_id, opened, {**value, "boxes": []}, "ana")
    assert list(review_store.get(sample_id).ground_truth.data["class_name"]) == ["star"]

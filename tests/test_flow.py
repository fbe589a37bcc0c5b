"""A review session that flows: accept and next, skip, the queue strip, progress; through the
handlers and the API."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from app import flow, review
from datasets.shapes import generate_sample


@pytest.fixture
def queued(state, review_store, tiny_detr_dir):
    """Four images sent to review with the tiny model's predictions."""
    ids = [review.send_to_review(state, generate_sample(100 + i).image, str(tiny_detr_dir), 0.05, 128)[1]
           for i in range(4)]
    return ids


def test_accept_saves_what_the_editor_showed_and_opens_the_next(state, review_store, queued):
    value, sample_id, revision, _ = review.next_to_review(state, None, 0.3)
    shown = [(b["label"], b["xmin"], b["ymin"]) for b in value["boxes"]]
    session = flow.Session()
    _, next_id, _, status, session = flow.accept_and_next(state, sample_id, revision, "ana", 0.3, session)
    assert next_id != sample_id and "Accepted" in status and session.reviewed == 1
    item = review_store.get(sample_id)
    assert item.status == "reviewed" and item.reviewer == "ana" and item.revision == revision + 1
    stored = [(name, int(round(x0)), int(round(y0))) for (x0, y0, _, _), name
              in zip(item.ground_truth.xyxy, item.ground_truth.data["class_name"])]
    assert stored == shown
    with pytest.raises(gr.Error, match="revision"):  # the same accept again is stale: refused
        flow.accept_and_next(state, sample_id, revision, "ana", 0.3, session)


def test_skip_moves_on_and_remembers(state, review_store, queued):
    session = flow.Session()
    _, first, _, _ = review.next_to_review(state, None, 0.5)
    seen = [first]
    for _ in range(3):
        _, sample_id, _, status, session = flow.skip(state, seen[-1], 0.5, session)
        assert "Skipped" in status and sample_id not in seen
        seen.append(sample_id)
    assert sorted(seen) == sorted(queued) and len(review_store.reviewed_view()) == 0  # nothing saved
    with pytest.raises(gr.Error, match="Nothing left"):
        flow.skip(state, seen[-1], 0.5, session)


def test_queue_strip_follows_the_queue(state, review_store, queued):
    session = flow.Session()
    items, ids, progress = flow.queue_strip(state, None, session)
    assert ids == [str(i) for i in review_store.queue().values("id")] and len(items) == 4
    scores = [float(caption) for _, caption in items]
    assert scores == sorted(scores)  # least confident first
    _, _, revision, _ = review.load_sample(state, ids[0], 0.5)
    flow.accept_and_next(state, ids[0], revision, "ana", 0.5, session)
    items, ids, progress = flow.queue_strip(state, None, session)
    assert len(ids) == 3 and "1 reviewed" in progress


def test_the_api_names(state, review_store, tiny_detr_dir, queued):
    from gradio_client import Client

    from conftest import state_with
    from app.ui import build_app, launch

    served = state_with(state, model=str(tiny_detr_dir))
    demo = launch(build_app(served), served, server_name="127.0.0.1", server_port=None, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        _, sample_id, revision, _ = client.predict(None, 0.5, api_name="/next_to_review")
        _, next_id, _, status = client.predict(sample_id, revision, "ana", 0.5, api_name="/accept_and_next")
        assert next_id != sample_id and "Accepted" in status
        _, after_skip, _, status = client.predict(next_id, 0.5, api_name="/skip")
        assert after_skip not in (sample_id, next_id) and "Skipped" in status
    finally:
        demo.close()
    assert review_store.get(sample_id).reviewer == "ana" and np.isfinite(review_store.get(sample_id).revision)


def test_a_saved_view_becomes_the_queue(state, review_store, queued):
    """Choosing a saved FiftyOne view (here the 'reviewed' view) makes its samples the queue."""
    _, _, revision, _ = review.load_sample(state, queued[0], 0.5)
    flow.accept_and_next(state, queued[0], revision, "ana", 0.5)
    review_store.save_views()
    choices = flow.queue_choices(state)
    assert ("saved view: reviewed", "reviewed") in choices and choices[0][1] == ""
    session = flow.Session()
    _, sample_id, _, _, session = flow.choose_queue(state, "reviewed", 0.5, session)
    assert sample_id == queued[0] and session.view == "reviewed"
    items, ids, _ = flow.queue_strip(state, None, session)
    assert ids == [queued[0]]
    with pytest.raises(gr.Error, match="no saved view 'nope'"):
        flow.choose_queue(state, "nope", 0.5, session)

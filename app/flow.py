"""A review session that flows: accept what the model found and move on, skip, see what comes next.

    accept_and_next(sample_id, revision, reviewer, threshold)   # Enter: what the editor opened with
                                                                # becomes the truth; the next opens
    skip(sample_id, threshold)                                  # S: on to the next, nothing saved

The boxes accepted are exactly those the editor opened the sample with (its truth, else the
predictions at the threshold: `app.review.shown_boxes`), through the store's one write path, so a
stale revision is refused as for Save. A session (one browser tab, or one API client) remembers
what it skipped and how many it reviewed, for the progress line; the queue strip shows the next
images in queue order with their top confidence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gradio as gr

from app.inputs import threshold_value
from app.review import load_sample, next_to_review, shown_boxes
from datasets.labels import ReviewError

if TYPE_CHECKING:
    from app.state import AppState

STRIP_LENGTH = 10
DEFAULT_QUEUE = "unreviewed, most uncertain first"


@dataclass
class Session:
    """One reviewer's session (kept by Gradio per browser tab or API client)."""

    started: float = field(default_factory=time.time)
    reviewed: int = 0
    skipped: list[str] = field(default_factory=list)
    view: str | None = None  # a saved FiftyOne view as the queue; None: unreviewed, most uncertain first

    def progress(self) -> str:
        hours = max(time.time() - self.started, 1.0) / 3600
        return f"This session: {self.reviewed} reviewed ({self.reviewed / hours:.0f} per hour), {len(self.skipped)} skipped."


def accept_and_next(state: AppState, sample_id: str, revision, reviewer: str, threshold: float = 0.5,
                    session: Session | None = None):
    """Save the boxes the editor opened ``sample_id`` with as its truth, then open the next sample.

    Returns ``(editor value, sample id, revision, status, session)`` like `app.review.next_to_review`.
    """
    threshold = threshold_value(threshold)
    session = session or Session()
    if not sample_id:
        raise gr.Error("Load a sample into the editor first (Next to review).")
    try:
        item = state.store.get(sample_id)
        state.store.save_review(sample_id, shown_boxes(item, threshold), int(revision), reviewer)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    session.reviewed += 1
    value, next_id, revision, status = next_to_review(state, sample_id, threshold, session.skipped, session.view)
    done = " Nothing left in this queue." if next_id == sample_id else ""
    return value, next_id, revision, f"Accepted.{done} {status}", session


def skip(state: AppState, sample_id: str, threshold: float = 0.5, session: Session | None = None):
    """Leave ``sample_id`` as it is and open the next sample this session has not skipped."""
    threshold = threshold_value(threshold)
    session = session or Session()
    if sample_id and sample_id not in session.skipped:
        session.skipped.append(sample_id)
    try:
        next_id = state.store.next_to_review(session.skipped, session.view)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    if next_id is None:
        raise gr.Error("Nothing left to review in this session (the rest were skipped); reload the page to see "
                       "skipped images again.")
    value, next_id, revision, status = load_sample(state, next_id, threshold)
    return value, next_id, revision, f"Skipped. {status}", session


def next_in_queue(state: AppState, current: str | None = None, threshold: float = 0.5, session: Session | None = None):
    """The next sample of this session's queue (see `choose_queue`)."""
    session = session or Session()
    return (*next_to_review(state, current, threshold, session.skipped, session.view), session)


def queue_choices(state: AppState) -> list[tuple[str, str]]:
    """The queues to choose from: the default, then every saved FiftyOne view of the dataset."""
    return [(DEFAULT_QUEUE, "")] + [(f"saved view: {name}", name) for name in state.store.dataset.list_saved_views()]


def choose_queue(state: AppState, view: str | None, threshold: float = 0.5, session: Session | None = None):
    """Make saved view ``view`` (empty: the default) this session's queue and open its first sample."""
    session = session or Session()
    session.view, session.skipped = (view or None), []
    return next_in_queue(state, None, threshold, session)


def queue_strip(state: AppState, current: str | None = None, session: Session | None = None):
    """The next `STRIP_LENGTH` images of the queue as ``(thumbnail, top confidence)``, their sample ids,
    and the session's progress."""
    session = session or Session()
    try:
        chosen = state.store.queue([current, *session.skipped] if current else session.skipped, session.view)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    chosen = chosen.limit(STRIP_LENGTH)
    ids, paths, scores = chosen.values("id"), chosen.values("filepath"), chosen.values("top_confidence")
    return [(path, f"{score or 0:.2f}") for path, score in zip(paths, scores)], [str(i) for i in ids], \
        session.progress()


def open_from_strip(state: AppState, ids: list[str], threshold: float, evt: gr.SelectData):
    """Open the sample clicked in the queue strip."""
    return load_sample(state, ids[evt.index], threshold)

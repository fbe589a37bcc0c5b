"""The one write path for the reviewed truth: a compare-and-set in one atomic MongoDB update.

Every change of a sample's ``ground_truth`` made by DETR Studio (a save, an undo) is a new
revision of its ``review`` record, and the record keeps a copy of the truth that revision wrote
(``review.ground_truth``). That copy is what lets any other writer be seen: the FiftyOne App
edits labels in place, a script can ``sample.save()``, another server can share the database, and
none of them touches ``review``. So, for a sample read now:

- the truth differs from the record's copy -> someone changed it outside this write path since
  the last revision (`truth_changed_outside`);
- a save names the revision it was made against; it is written only when that revision is still
  the stored one *and* nothing changed the truth since (else `StaleRevisionError`, nothing written);
- the write itself is one ``update_one`` whose filter is the revision and the exact truth and tags
  just read, so a writer that slipped in between makes it match nothing (refused, not merged).

Truth is compared by label and box only: FiftyOne's evaluation writes ``eval`` attributes into
the same detections, and that is not an edit. An outside edit found on reading is adopted as a
revision of its own (`adopt`), with who (when known) and when, so undo and the history stay whole.
A record written before this copy existed has none; the check starts with its next revision.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from datasets.labels import StaleRevisionError

RECORD_CLASS = "DynamicEmbeddedDocument"
OUTSIDE = "outside DETR Studio"  # the reviewer of an adopted edit whose author is unknown (a script)


def now() -> datetime:
    """UTC without tzinfo, as FiftyOne stores times."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def truth_key(ground_truth: dict | None) -> tuple:
    """What counts as the truth of a raw ``ground_truth`` document: its (label, box) pairs, in any order."""
    detections = (ground_truth or {}).get("detections") or []
    return tuple(sorted((str(d.get("label")), tuple(round(float(v), 6) for v in d.get("bounding_box") or ()))
                        for d in detections))


def record(status: str, reviewer: object, revision: int, ground_truth: dict | None, time: datetime | None = None
           ) -> dict:
    """A raw ``review`` record: status, reviewer (one line, at most 64 characters), time, revision,
    and the truth this revision wrote."""
    name = " ".join(str(reviewer or "").split())[:64] or "anonymous"
    return {"_cls": RECORD_CLASS, "status": status, "reviewer": name, "time": time or now(), "revision": int(revision),
            "ground_truth": ground_truth}


def truth_changed_outside(raw: dict) -> bool:
    """Whether the stored truth differs from the copy its review record keeps (see the module docstring)."""
    review = raw.get("review") or {}
    return "ground_truth" in review and truth_key(raw.get("ground_truth")) != truth_key(review["ground_truth"])


def stale_message(review: dict, revision: int, outside: bool) -> str:
    if outside:
        return (f"this image's labels were changed outside the Review tab (the FiftyOne App or a script) after you "
                f"opened it at revision {revision}. Nothing was overwritten: reload the sample to see that edit, "
                "then redo yours.")
    if review.get("time") is not None:
        return (f"this image was saved by {review.get('reviewer') or 'someone'} at {review['time']:%Y-%m-%d %H:%M:%S} "
                f"UTC (revision {review.get('revision')}) after you opened it (revision {revision}). Nothing was "
                "overwritten: reload the sample to see their edit, then redo yours.")
    return f"this image is at revision {review.get('revision')}, not {revision}. Reload it and try again."


def _compare_and_set(collection, raw: dict, fields: dict) -> bool:
    """``$set`` ``fields`` on the sample ``raw`` in one update, only if its revision, truth and tags are
    still exactly those of ``raw`` (the document as read); returns whether it was written."""
    result = collection.update_one(
        {"_id": raw["_id"], "review.revision": (raw.get("review") or {}).get("revision"),
         "ground_truth": raw.get("ground_truth"), "tags": raw.get("tags", [])},
        {"$set": {**fields, "last_modified_at": now()}},
    )
    return result.matched_count == 1


def write(collection, raw: dict, revision: int, change: Callable[[dict], dict]) -> int:
    """Write ``change(raw)`` (the fields to ``$set``) as revision ``revision + 1`` of the sample ``raw``
    (its document as just read), if ``revision`` is current and nothing changed in between; returns
    the new revision. Raises `StaleRevisionError` otherwise, having written nothing."""
    review = raw.get("review") or {}
    if int(review.get("revision", -1)) != int(revision):
        raise StaleRevisionError(stale_message(review, revision, outside=False))
    if truth_changed_outside(raw):
        raise StaleRevisionError(stale_message(review, revision, outside=True))
    if not _compare_and_set(collection, raw, change(raw)):  # another writer between our read and this update
        current = collection.find_one({"_id": raw["_id"]}, {"review": 1}) or {}
        raise StaleRevisionError(stale_message(current.get("review") or {}, revision,
                                               outside=int((current.get("review") or {}).get("revision", -1))
                                               == int(revision)))
    return int(revision) + 1


def adopt(collection, raw: dict, who: str | None = None) -> bool:
    """Record an outside edit of the truth as a revision of its own (status kept, reviewer ``who`` or
    `OUTSIDE`, time of the edit); the previous revision and its truth go to the history. Returns
    whether there was one to adopt (a racing writer that adopts or saves first wins; that is fine)."""
    if not truth_changed_outside(raw):
        return False
    review = raw["review"]
    history = [*(raw.get("review_history") or []), {**review, "_cls": RECORD_CLASS}]  # with the truth it wrote
    adopted = record(review.get("status"), who or OUTSIDE, int(review.get("revision", 0)) + 1,
                     raw.get("ground_truth"), raw.get("last_modified_at") or now())
    return _compare_and_set(collection, raw, {"review": adopted, "review_history": history})

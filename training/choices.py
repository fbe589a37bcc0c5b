"""What a fine-tune decides from its validation split: which epoch to keep, when to stop, the new
version's inference size, duplicate removal and test-time flip, and which old classes it forgot.

Pure functions of validation scores (no models, no files), so each rule is tested on a table of
hand-made cases; `training.job` calls them while it trains and when it writes the version.
"""

from __future__ import annotations

from core.evaluate import Metrics

FORGETTING_LIMIT = 0.05  # an old class whose validation AP falls by more than this is flagged as forgotten


def smoothed_ap(history: list[dict], window: int) -> float:
    """The mean validation AP of the last ``window`` epochs of ``history`` (``{"epoch", "val_AP"}`` in
    epoch order): what picks the best epoch. On ~10 validation images one epoch's AP swings by a few
    hundredths while the learning rate is high, and the best single epoch was such a swing (more
    forgetting than the settled epochs after it); ``window`` 1 is the epoch's own AP."""
    recent = [entry["val_AP"] for entry in history[-max(window, 1):]]
    return sum(recent) / len(recent)


def next_kept(best: dict, epoch: int, ap: float, score: float, tolerance: float) -> tuple[dict, bool]:
    """After scoring ``epoch`` (validation ``ap``, smoothed ``score``): the new ``best`` record and
    whether this epoch becomes the kept one. ``best["top"]`` is the highest smoothed AP so far (epoch
    ``top_epoch``, what patience counts from); the kept epoch is the latest whose score is within
    ``tolerance`` of the top when it was scored. Validation cannot tell such epochs apart, and the
    later one has trained longer at a lower learning rate: on the star check the early ones were the
    ones that forgot (docs/fine-tuning.md)."""
    top = best.get("top", best.get("score", best["ap"]))
    top_epoch = best.get("top_epoch", best["epoch"])
    if score > top:
        top, top_epoch = score, epoch
    if score < top - tolerance:
        return {**best, "top": top, "top_epoch": top_epoch}, False
    return {"ap": ap, "score": score, "epoch": epoch, "top": top, "top_epoch": top_epoch}, True


def forgotten_classes(before: Metrics, after: Metrics, old_labels: list[str],
                      limit: float = FORGETTING_LIMIT) -> dict[str, float]:
    """The classes of ``old_labels`` whose validation AP fell by more than ``limit``: name -> change.
    A class without validation boxes (AP -1) before or after is not judged."""
    changes = {}
    for name in old_labels:
        was, now = before.per_class.get(name, -1.0), after.per_class.get(name, -1.0)
        if was >= 0 and now >= 0 and now < was - limit:
            changes[name] = round(now - was, 3)
    return changes


def inference_size(scores: dict[int, float], tolerance: float) -> int:
    """The smallest shortest edge whose validation AP is within ``tolerance`` of the best of ``scores``
    (shortest edge -> AP): more pixels cost time on every image, so they must earn it."""
    best = max(scores.values())
    return min(size for size, ap in scores.items() if ap >= best - tolerance)


def keeps(without_ap: float, with_ap: float, tolerance: float) -> bool:
    """Whether a version keeps a change to how its predictions are made — duplicate removal (class-wise
    NMS) or the test-time flip — scored on the same validation forward pass: unless validation AP with
    it (``with_ap``) is lower than without it (``without_ap``) by more than ``tolerance``.

    DETR is meant to leave one query per object, and does for the classes it learned from thousands of
    images, but a class learned from tens of reviewed ones is often found twice, and its boxes are
    less sure: on eight star checks the removal raised held-out star AP on six (+0.007 to +0.023), and
    the flip on top of it on all thirteen of fourteen where validation kept it (+0.009 to +0.038; the
    old classes mostly rose too), while ~10 validation images ranked either by a few thousandths either
    way (docs/fine-tuning.md). Where one costs clearly more than that on validation (objects of one
    class overlapping closely; a model that reads mirrored images worse), it is not kept.
    """
    return with_ap >= without_ap - tolerance

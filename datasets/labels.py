"""Labels and boxes as the review store keeps them: one check for what users enter, and the
conversion between `sv.Detections` in pixels and FiftyOne's ``fo.Detections`` (normalized
top-left boxes). The review schema (`datasets.review`) stores only what passes through here.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import supervision as sv

from core.boxes import box_xywhn_to_xyxy, box_xyxy_to_xywhn

MAX_LABEL_LENGTH = 64


class ReviewError(ValueError):
    """Input the store refuses (bad box, bad label, unknown sample); nothing was written."""


class StaleRevisionError(ReviewError):
    """A save made against an older revision than the stored one; nothing was overwritten."""


def clean_label(name: object) -> str:
    """A class name as stored: trimmed text, 1-64 characters, no control characters.

    HTML is allowed as text (the app shows labels as text, never as markup).
    """
    if not isinstance(name, str):
        raise ReviewError(f"a label must be text, got {type(name).__name__}.")
    text = " ".join(name.split())
    if not text:
        raise ReviewError("a box has an empty label; choose or type a class name.")
    if len(text) > MAX_LABEL_LENGTH:
        raise ReviewError(f"label {text[:20]!r}... is longer than {MAX_LABEL_LENGTH} characters.")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ReviewError(f"label {text!r} contains control characters.")
    return text


def check_boxes(detections: sv.Detections, width: int, height: int) -> sv.Detections:
    """Validated pixel boxes: finite, positive size, inside the image (clipped by at most 1 px)."""
    xyxy = np.asarray(detections.xyxy, dtype=np.float64).reshape(-1, 4)
    names = detections.data.get("class_name", np.array([], dtype=str))
    if len(names) != len(xyxy):
        raise ReviewError("every box needs a label (data['class_name']).")
    for i, (box, name) in enumerate(zip(xyxy, names)):
        where = f"box {i + 1} ({name!s:.20})"
        if not np.all(np.isfinite(box)):
            raise ReviewError(f"{where} has a non-numeric coordinate.")
        x0, y0, x1, y1 = box
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise ReviewError(f"{where} has zero or negative size ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}); "
                              "drag it out to a real box or delete it.")
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
            raise ReviewError(f"{where} lies outside the {width}x{height} image; move it inside.")
    labels = [clean_label(name) for name in names]
    clipped = np.clip(xyxy, 0, [width, height, width, height])
    data = {**detections.data, "class_name": np.array(labels, dtype=object)}
    return sv.Detections(xyxy=clipped.astype(np.float32), confidence=detections.confidence,
                         class_id=detections.class_id, data=data)


def to_fiftyone(detections: sv.Detections, width: int, height: int, model_version: str | None = None):
    """`sv.Detections` in pixels -> ``fo.Detections`` (normalized top-left boxes)."""
    import fiftyone as fo

    boxes = box_xyxy_to_xywhn(np.asarray(detections.xyxy, dtype=np.float64).reshape(-1, 4), width, height)
    names = detections.data.get("class_name", [])
    queries = detections.data.get("query_index")
    items = []
    for i, (box, name) in enumerate(zip(boxes, names)):
        attributes = {}
        if detections.confidence is not None:
            attributes["confidence"] = float(detections.confidence[i])
        if queries is not None and int(queries[i]) >= 0:
            attributes["query_index"] = int(queries[i])
        if model_version is not None:
            attributes["model_version"] = model_version
        items.append(fo.Detection(label=str(name), bounding_box=[float(v) for v in box], **attributes))
    return fo.Detections(detections=items)


def from_fiftyone(labels, width: int, height: int, classes: list[str]) -> sv.Detections:
    """``fo.Detections`` (or None) -> `sv.Detections` in pixels, ``class_id`` indexing ``classes``."""
    items = labels.detections if labels is not None else []
    if not items:
        return sv.Detections.empty()
    boxes = box_xywhn_to_xyxy(np.array([d.bounding_box for d in items], dtype=np.float64), width, height)
    confidence = [d.confidence if d.confidence is not None else 1.0 for d in items]
    return sv.Detections(
        xyxy=boxes.astype(np.float32),
        confidence=np.array(confidence, dtype=np.float32),
        class_id=np.array([classes.index(d.label) if d.label in classes else -1 for d in items], dtype=int),
        data={"class_name": np.array([d.label for d in items], dtype=object),
              "query_index": np.array([d["query_index"] if d.has_field("query_index") and d["query_index"] is not None
                                       else -1 for d in items], dtype=int)},
    )

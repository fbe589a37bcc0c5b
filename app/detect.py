"""The Detect tab's handler: a plain function, called by Gradio and by the tests."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np

from app.inputs import (detector_for, image_and_detector, prediction_note, processing_size, threshold_value,
                        with_note)
from core.annotate import annotate
from core.images import ImageError, load_image
from core.loading import ModelLoadError

if TYPE_CHECKING:
    from app.state import AppState

DETECTION_HEADERS = ["query", "label", "score", "x1", "y1", "x2", "y2"]


def _rows(detections) -> list[list]:
    return [
        [int(query), str(name), round(float(score), 3), *[round(float(v), 1) for v in xyxy]]
        for query, name, score, xyxy in zip(
            detections.data["query_index"], detections.data["class_name"], detections.confidence, detections.xyxy
        )
    ]


def detect(
    state: AppState,
    image: np.ndarray | str | None, model_name: str, threshold: float, size: int | None = None,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, list[list], str]:
    """Run ``model_name`` on ``image``; return the annotated image, the detection rows and a status line.

    ``size`` is the shortest edge images are resized to; None or 0 uses the model's own setting.
    ``classes`` keeps only those class names (None or empty: all).

    Rows are ``[query index, label, score, x1, y1, x2, y2]`` in pixels of the image, best first.
    Raises `gr.Error` (shown as a message in the browser) for a missing or unreadable image, an
    out-of-range threshold, or a model that cannot be loaded.
    """
    threshold, size = threshold_value(threshold), processing_size(size)
    picture, detector = image_and_detector(state.models, image, model_name)

    start = time.perf_counter()
    outputs = state.gpu.predict(detector, [picture], shortest_edge=size)[0]
    seconds = time.perf_counter() - start
    detections = outputs.to_detections(threshold, classes or None)
    rows = _rows(detections)
    status = (
        f"{len(rows)} detection{'s' if len(rows) != 1 else ''} of {outputs.num_queries} queries in {seconds:.2f} s "
        f"· model `{detector.name}` on {detector.device.type} ({detector.engine_name}) · shortest edge "
        f"{size or detector.preprocess.shortest_edge} px{prediction_note(detector)}"
    )
    return annotate(picture, detections), rows, with_note(status, detector, state.models.engine_note(model_name))


def detect_batch(
    state: AppState,
    files: list | None, model_name: str, threshold: float, size: int | None = None, classes: list[str] | None = None,
) -> tuple[list[tuple[np.ndarray, str]], list[list], str]:
    """Several images at once: ``(gallery of (annotated, caption), rows with the file name first, status)``.

    Unreadable files are reported in the status and skipped; the others still run.
    """
    if not files:
        raise gr.Error("Upload one or more images first.")
    threshold, size = threshold_value(threshold), processing_size(size)
    detector = detector_for(state.models, model_name)
    names = [Path(getattr(f, "name", f)).name for f in files]
    pictures, problems = [], []
    for file, name in zip(files, names):
        try:
            pictures.append((name, load_image(getattr(file, "name", file))))
        except ImageError as error:
            problems.append(f"{name}: {error}")
    start = time.perf_counter()
    outputs = state.gpu.predict(detector, [picture for _, picture in pictures], shortest_edge=size)
    seconds = time.perf_counter() - start
    gallery, rows = [], []
    for (name, picture), out in zip(pictures, outputs):
        detections = out.to_detections(threshold, classes or None)
        gallery.append((annotate(picture, detections), f"{name}: {len(detections)}"))
        rows.extend([name, *row] for row in _rows(detections))
    status = (f"{len(pictures)} images, {len(rows)} detections in {seconds:.2f} s · model `{detector.name}` "
              f"({detector.engine_name}){prediction_note(detector)}")
    if problems:
        status += "\n\nSkipped:\n" + "\n".join(f"- {p}" for p in problems)
    return gallery, rows, with_note(status, detector, state.models.engine_note(model_name))


def model_labels(state: AppState, model_name: str):
    """The class filter's choices for ``model_name`` (empty when it cannot be loaded yet)."""
    try:
        return gr.update(choices=state.models.get(model_name).labels, value=[])
    except ModelLoadError:
        return gr.update(choices=[], value=[])

"""The Detect tab's handler: a plain function, called by Gradio and by the tests."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np

from app.models import get_detector
from core.annotate import annotate
from core.images import ImageError, load_image
from core.inference import predict
from core.loading import ModelLoadError

DETECTION_HEADERS = ["query", "label", "score", "x1", "y1", "x2", "y2"]


def _check(threshold: float, size: int | None) -> int | None:
    if threshold is None or not 0.0 <= float(threshold) <= 1.0:
        raise gr.Error(f"The threshold must be between 0 and 1, got {threshold}.")
    size = int(size) if size else None  # 0 from the slider: the model's own size
    if size is not None and not 32 <= size <= 4096:
        raise gr.Error(f"The processing size must be between 32 and 4096 pixels, got {size}.")
    return size


def _rows(detections) -> list[list]:
    return [
        [int(query), str(name), round(float(score), 3), *[round(float(v), 1) for v in xyxy]]
        for query, name, score, xyxy in zip(
            detections.data["query_index"], detections.data["class_name"], detections.confidence, detections.xyxy
        )
    ]


def detect(
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
    if image is None:
        raise gr.Error("Upload an image or pick an example first.")
    size = _check(threshold, size)
    try:
        picture = load_image(image)
        detector = get_detector(model_name)
    except (ImageError, ModelLoadError) as error:
        raise gr.Error(str(error)) from None

    start = time.perf_counter()
    outputs = predict(detector, [picture], shortest_edge=size)[0]
    seconds = time.perf_counter() - start
    detections = outputs.to_detections(float(threshold), classes or None)
    rows = _rows(detections)
    status = (
        f"{len(rows)} detection{'s' if len(rows) != 1 else ''} of {outputs.num_queries} queries in {seconds:.2f} s "
        f"· model `{detector.name}` on {detector.device.type} · shortest edge "
        f"{size or detector.preprocess.shortest_edge} px"
    )
    if detector.note:
        status = f"**Note:** {detector.note}\n\n{status}"
    return annotate(picture, detections), rows, status


def detect_batch(
    files: list | None, model_name: str, threshold: float, size: int | None = None, classes: list[str] | None = None,
) -> tuple[list[tuple[np.ndarray, str]], list[list], str]:
    """Several images at once: ``(gallery of (annotated, caption), rows with the file name first, status)``.

    Unreadable files are reported in the status and skipped; the others still run.
    """
    if not files:
        raise gr.Error("Upload one or more images first.")
    size = _check(threshold, size)
    try:
        detector = get_detector(model_name)
    except ModelLoadError as error:
        raise gr.Error(str(error)) from None
    names = [Path(getattr(f, "name", f)).name for f in files]
    pictures, problems = [], []
    for file, name in zip(files, names):
        try:
            pictures.append((name, load_image(getattr(file, "name", file))))
        except ImageError as error:
            problems.append(f"{name}: {error}")
    start = time.perf_counter()
    outputs = predict(detector, [picture for _, picture in pictures], shortest_edge=size)
    seconds = time.perf_counter() - start
    gallery, rows = [], []
    for (name, picture), out in zip(pictures, outputs):
        detections = out.to_detections(float(threshold), classes or None)
        gallery.append((annotate(picture, detections), f"{name}: {len(detections)}"))
        rows.extend([name, *row] for row in _rows(detections))
    status = f"{len(pictures)} images, {len(rows)} detections in {seconds:.2f} s · model `{detector.name}`"
    if problems:
        status += "\n\nSkipped:\n" + "\n".join(f"- {p}" for p in problems)
    if detector.note:
        status = f"**Note:** {detector.note}\n\n{status}"
    return gallery, rows, status


def model_labels(model_name: str):
    """The class filter's choices for ``model_name`` (empty when it cannot be loaded yet)."""
    try:
        return gr.update(choices=get_detector(model_name).labels, value=[])
    except ModelLoadError:
        return gr.update(choices=[], value=[])

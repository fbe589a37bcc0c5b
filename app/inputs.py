"""What every tab checks in what the user entered: the threshold, the processing size, the image and
the model. One place, so the tabs refuse the same input with the same message."""

from __future__ import annotations

import math

import gradio as gr
from PIL import Image

from app.models import ModelCache
from core.images import ImageError, load_image
from core.loading import Detector, ModelLoadError

NO_IMAGE = "Upload an image or pick an example first."


def _number(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"The {what} must be a number, got {str(value)[:40]!r}.") from None
    if not math.isfinite(number):
        raise gr.Error(f"The {what} must be a finite number, got {value}.")
    return number


def threshold_value(threshold) -> float:
    number = _number(threshold, "threshold")
    if not 0.0 <= number <= 1.0:
        raise gr.Error(f"The threshold must be between 0 and 1, got {threshold}.")
    return number


def processing_size(size) -> int | None:
    """The shortest edge to resize to; None (0 from the slider) keeps the model's own."""
    if size is None or size == "":
        return None
    number = _number(size, "processing size")
    if number == 0:
        return None
    if not 32 <= number <= 4096 or number != int(number):
        raise gr.Error(f"The processing size must be a whole number of 32 to 4096 pixels (0: the model's own), "
                       f"got {size}.")
    return int(number)


def detector_for(models: ModelCache, model_name: str) -> Detector:
    """The loaded model ``model_name``, or a `gr.Error` saying why it cannot be loaded."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise gr.Error("Choose a model first (bundled, a hub id, or a fine-tuned version).")
    try:
        return models.get(model_name)
    except ModelLoadError as error:
        raise gr.Error(str(error)) from None


def image_and_detector(models: ModelCache, image, model_name: str, missing: str = NO_IMAGE
                       ) -> tuple[Image.Image, Detector]:
    """The decoded image and the loaded model, or a `gr.Error` saying what is wrong."""
    if image is None:
        raise gr.Error(missing)
    try:
        picture = load_image(image)
    except ImageError as error:
        raise gr.Error(str(error)) from None
    return picture, detector_for(models, model_name)


def prediction_note(detector: Detector) -> str:
    """What a fine-tuned version chose on validation to do after its forward pass, for status lines:
    duplicate removal and the test-time flip (`core.inference`); empty for hub and bundled models."""
    parts = [f"duplicates above IoU {detector.duplicate_iou:g} removed"] if detector.duplicate_iou else []
    if detector.test_time_flip:
        parts.append("each image also run mirrored and fused (test-time flip)")
    return "".join(f" · {part}" for part in parts)


def with_note(status: str, detector: Detector, engine_note: str | None = None) -> str:
    """``status`` led by the detector's note (e.g. why the bundled model stands in) and the engine's
    (why PyTorch runs instead), if there are any."""
    notes = [note for note in (detector.note, engine_note) if note]
    return "".join(f"**Note:** {note}\n\n" for note in notes) + status

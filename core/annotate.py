"""Drawing detections on images with supervision's annotators (used by the CLI and the app)."""

from __future__ import annotations

import numpy as np
import supervision as sv
from PIL import Image


def _thickness(width: int, height: int) -> int:
    return max(1, round(min(width, height) / 300))


def annotate(image: Image.Image | np.ndarray, detections: sv.Detections) -> np.ndarray:
    """Boxes and ``"label 0.93"`` captions drawn on a copy of ``image``; returns an RGB uint8 array.

    Colours follow ``class_id``, so one class has one colour across images.
    """
    scene = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    height, width = scene.shape[:2]
    thickness = _thickness(width, height)
    box = sv.BoxAnnotator(thickness=thickness, color_lookup=sv.ColorLookup.CLASS)
    label = sv.LabelAnnotator(
        text_scale=max(0.35, min(width, height) / 1200), text_thickness=thickness, text_padding=max(2, 2 * thickness),
        color_lookup=sv.ColorLookup.CLASS, smart_position=True,
    )
    if "class_name" in detections.data:
        names = [str(name) for name in detections.data["class_name"]]
    else:
        names = [str(class_id) for class_id in (detections.class_id if detections.class_id is not None else [])]
    captions = [f"{name} {score:.2f}" for name, score in zip(names, detections.confidence)]
    scene = box.annotate(scene, detections)
    return label.annotate(scene, detections, labels=captions)

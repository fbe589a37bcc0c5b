"""The app's loaded models: each loaded once per process and shared by all sessions."""

from __future__ import annotations

import os
import threading

from core.loading import BUNDLED_DIR, BUNDLED_NAME, Detector, load_detector_or_bundled

HUB_MODELS = ["facebook/detr-resnet-50", "microsoft/conditional-detr-resnet-50"]

_lock = threading.Lock()
_cache: dict[str, Detector] = {}


def model_choices() -> list[str]:
    """What the model picker offers; a local directory can be typed in as well."""
    return ([BUNDLED_NAME] if (BUNDLED_DIR / "config.json").is_file() else []) + HUB_MODELS


def default_model() -> str:
    """``DETR_STUDIO_MODEL`` if set, else DETR-R50 (the bundled model stands in offline)."""
    return os.environ.get("DETR_STUDIO_MODEL", HUB_MODELS[0])


def get_detector(name: str) -> Detector:
    """The detector for ``name``, loaded on first use. Raises `core.loading.ModelLoadError`."""
    name = name.strip()
    with _lock:  # one load at a time: two sessions asking for the same model load it once
        if name not in _cache:
            _cache[name] = load_detector_or_bundled(name)
        return _cache[name]

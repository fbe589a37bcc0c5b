"""The app's loaded models: each loaded once per process and shared by all sessions."""

from __future__ import annotations

import os
import threading

from core.loading import BUNDLED_DIR, BUNDLED_NAME, Detector, ModelLoadError, load_detector_or_bundled
from training.registry import PREFIX as VERSION_PREFIX

HUB_MODELS = ["facebook/detr-resnet-50", "microsoft/conditional-detr-resnet-50"]

_lock = threading.Lock()
_cache: dict[str, Detector] = {}


def model_choices() -> list[str]:
    """What the model picker offers: bundled, the hub models, then every fine-tuned version (newest
    first); a local directory can be typed in as well."""
    from app.review import registry

    versions = [version.name for version in reversed(registry().versions())]
    return ([BUNDLED_NAME] if (BUNDLED_DIR / "config.json").is_file() else []) + HUB_MODELS + versions


def default_model() -> str:
    """``DETR_STUDIO_MODEL`` if set, else DETR-R50 (the bundled model stands in offline)."""
    return os.environ.get("DETR_STUDIO_MODEL", HUB_MODELS[0])


def get_detector(name: str) -> Detector:
    """The detector for ``name``, loaded on first use. Raises `core.loading.ModelLoadError`."""
    name = name.strip()
    with _lock:  # one load at a time: two sessions asking for the same model load it once
        if name not in _cache:
            if name.startswith(VERSION_PREFIX):
                from app.review import registry
                from training.registry import RegistryError

                try:
                    path = registry().get(name).path
                except RegistryError as error:
                    raise ModelLoadError(str(error)) from None
                detector = load_detector_or_bundled(path)
                detector.name = name  # predictions stored in review keep the version that made them
                _cache[name] = detector
            else:
                _cache[name] = load_detector_or_bundled(name)
            _cache[name].cpu_bf16 = os.environ.get("DETR_STUDIO_CPU_BF16", "") == "1"
        return _cache[name]

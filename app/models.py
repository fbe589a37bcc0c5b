"""The app's loaded models: each loaded once per process and shared by all sessions."""

from __future__ import annotations

import threading

from core.loading import BUNDLED_DIR, BUNDLED_NAME, Detector, VersionDir, load_detector_or_bundled


class ModelCache:
    """Detectors by name, loaded on first use with the one loader (`core.loading`).

    ``version_dir`` resolves ``version:vNNNN`` names (the registry's); ``cpu_bf16`` turns on bf16
    autocast on CPU for every model it loads.
    """

    def __init__(self, version_dir: VersionDir | None = None, cpu_bf16: bool = False):
        self.version_dir, self.cpu_bf16 = version_dir, cpu_bf16
        self._lock = threading.Lock()
        self._detectors: dict[str, Detector] = {}

    def get(self, name: str) -> Detector:
        """The detector for ``name``, loaded on first use. Raises `core.loading.ModelLoadError`."""
        name = name.strip()
        with self._lock:  # one load at a time: two sessions asking for the same model load it once
            if name not in self._detectors:
                detector = load_detector_or_bundled(name, version_dir=self.version_dir)
                detector.cpu_bf16 = self.cpu_bf16
                self._detectors[name] = detector
            return self._detectors[name]

    def __contains__(self, name: str) -> bool:
        return name.strip() in self._detectors


def model_choices(hub_models, versions: list[str]) -> list[str]:
    """What the model picker offers: bundled, the hub models, then the fine-tuned ``versions``
    (newest first); a local directory can be typed in as well."""
    return ([BUNDLED_NAME] if (BUNDLED_DIR / "config.json").is_file() else []) + list(hub_models) + versions

"""The app's loaded models: each loaded once per process and shared by all sessions."""

from __future__ import annotations

import threading
from pathlib import Path

from core.engines import attach_engine, default_cache_dir
from core.loading import BUNDLED_DIR, BUNDLED_NAME, Detector, VersionDir, load_detector_or_bundled


class ModelCache:
    """Detectors by name, loaded on first use with the one loader (`core.loading`).

    ``version_dir`` resolves ``version:vNNNN`` names (the registry's); ``cpu_bf16`` turns on bf16
    autocast on CPU for every model it loads (with the torch engine). ``engine`` (`core.engines`)
    is prepared in the background when a model is first loaded (exporting it once per weights
    digest into ``engine_cache``); until it is ready, and if it cannot run, PyTorch runs the model
    and ``engine_note(name)`` says why.
    """

    def __init__(self, version_dir: VersionDir | None = None, cpu_bf16: bool = False, engine: str = "torch",
                 engine_cache: Path | None = None):
        self.version_dir, self.cpu_bf16 = version_dir, cpu_bf16
        self.engine = "torch" if cpu_bf16 else engine
        self.engine_cache = engine_cache
        self._lock = threading.Lock()
        self._detectors: dict[str, Detector] = {}
        self._preparing: dict[str, threading.Thread] = {}
        self._notes: dict[str, str | None] = {}

    def get(self, name: str) -> Detector:
        """The detector for ``name``, loaded on first use. Raises `core.loading.ModelLoadError`."""
        name = name.strip()
        with self._lock:  # one load at a time: two sessions asking for the same model load it once
            if name not in self._detectors:
                detector = load_detector_or_bundled(name, version_dir=self.version_dir)
                detector.cpu_bf16 = self.cpu_bf16
                self._detectors[name] = detector
                if self.engine != "torch" and detector.device.type == "cpu":
                    self._notes[name] = f"Preparing the {self.engine} engine for this model; PyTorch runs it meanwhile."
                    thread = threading.Thread(target=self._prepare, args=(name, detector), daemon=True)
                    self._preparing[name] = thread
                    thread.start()
            return self._detectors[name]

    def _prepare(self, name: str, detector: Detector) -> None:
        note = attach_engine(detector, self.engine, self.engine_cache or default_cache_dir())
        self._notes[name] = note

    def engine_note(self, name: str) -> str | None:
        """Why the engine is not running ``name`` (yet), or None."""
        return self._notes.get(name.strip())

    def wait_for_engine(self, name: str, timeout: float | None = None) -> None:
        """Block until the engine of ``name`` is prepared (or given up on)."""
        thread = self._preparing.get(name.strip())
        if thread is not None:
            thread.join(timeout)

    def __contains__(self, name: str) -> bool:
        return name.strip() in self._detectors


def model_choices(hub_models, versions: list[str]) -> list[str]:
    """What the model picker offers: bundled, the hub models, then the fine-tuned ``versions``
    (newest first); a local directory can be typed in as well."""
    return ([BUNDLED_NAME] if (BUNDLED_DIR / "config.json").is_file() else []) + list(hub_models) + versions

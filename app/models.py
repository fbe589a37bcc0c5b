"""The app's loaded models: each loaded once per process and shared by all sessions, at most
``capacity`` at a time (least recently used out), and on a public server only the offered ones."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from core.engines import attach_engine, default_cache_dir
from core.loading import BUNDLED_DIR, BUNDLED_NAME, Detector, ModelLoadError, VersionDir, load_detector_or_bundled


class ModelCache:
    """Detectors by name, loaded on first use with the one loader (`core.loading`).

    ``version_dir`` resolves ``version:vNNNN`` names (the registry's); ``cpu_bf16`` turns on bf16
    autocast on CPU for every model it loads (with the torch engine). ``engine`` (`core.engines`)
    is prepared in the background when a model is first loaded (exporting it once per weights
    digest into ``engine_cache``); until it is ready, and if it cannot run, PyTorch runs the model
    and ``engine_note(name)`` says why.

    At most ``capacity`` models stay loaded; loading another drops the least recently used (every
    distinct name a visitor types would otherwise stay in memory for good). ``offered``, when given
    (on a Space), lists the only names that may be loaded: a typed folder or other hub id is refused.
    ``device``: where models load (None: CUDA when there is one; ``"cpu"`` on ZeroGPU).
    """

    def __init__(self, version_dir: VersionDir | None = None, cpu_bf16: bool = False, engine: str = "torch",
                 engine_cache: Path | None = None, capacity: int = 3,
                 offered: Callable[[], list[str]] | None = None, device: str | None = None):
        if capacity < 1:
            raise ValueError(f"the model cache must hold at least one model, got {capacity}.")
        self.version_dir, self.cpu_bf16 = version_dir, cpu_bf16
        self.engine = "torch" if cpu_bf16 else engine
        self.engine_cache = engine_cache
        self.capacity, self.offered, self.device = capacity, offered, device
        self._lock = threading.Lock()
        self._detectors: OrderedDict[str, Detector] = OrderedDict()
        self._preparing: dict[str, threading.Thread] = {}
        self._notes: dict[str, str | None] = {}

    def get(self, name: str) -> Detector:
        """The detector for ``name``, loaded on first use. Raises `core.loading.ModelLoadError`."""
        name = name.strip()
        if self.offered is not None and name not in (choices := self.offered()):
            raise ModelLoadError(f"This server offers only these models: {', '.join(choices)}. Typed folders and "
                                 "other hub ids are not loaded here; run DETR Studio locally to use them.")
        with self._lock:  # one load at a time: two sessions asking for the same model load it once
            if name not in self._detectors:
                detector = load_detector_or_bundled(name, self.device, version_dir=self.version_dir)
                detector.cpu_bf16 = self.cpu_bf16
                while len(self._detectors) >= self.capacity:
                    dropped, _ = self._detectors.popitem(last=False)
                    self._notes.pop(dropped, None)
                    self._preparing.pop(dropped, None)
                self._detectors[name] = detector
                if self.engine != "torch" and detector.device.type == "cpu":
                    self._notes[name] = f"Preparing the {self.engine} engine for this model; PyTorch runs it meanwhile."
                    thread = threading.Thread(target=self._prepare, args=(name, detector), daemon=True)
                    self._preparing[name] = thread
                    thread.start()
            self._detectors.move_to_end(name)
            return self._detectors[name]

    def peek(self, name: str) -> Detector | None:
        """The loaded detector for ``name`` or None, without loading and without the lock (a forked
        ZeroGPU worker reads its copy of the cache: the lock may have been held at the fork)."""
        return self._detectors.get(name.strip())

    def _prepare(self, name: str, detector: Detector) -> None:
        # In its own process: torch.export beside inference in the server's other threads aborts it.
        note = attach_engine(detector, self.engine, self.engine_cache or default_cache_dir(), own_process=True)
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

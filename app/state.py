"""The server's state, in one object built once by `app.py` and handed to every handler.

`AppState` holds the settings (`app.config.AppConfig`), the data directory, the review store
(opened on first use), the model registry, the loaded models, where tensor work runs
(`app.gpu.Gpu`: here, or on ZeroGPU in ``@spaces.GPU``), the Queries tab's cache and the one
fine-tune job. Handlers are plain functions whose first argument is the state; `app.ui` binds them.
Tests build a state of their own instead of patching module globals.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from app.config import HUB_MODELS, AppConfig
from app.gpu import Gpu, Hardware
from app.models import ModelCache, model_choices
from datasets.journal import Journal
from datasets.labels import ReviewError
from datasets.review import ReviewStore
from training.registry import Registry


class QueryCache:
    """The Queries tab's outputs of the last ``size`` (image, model, size) combinations (`app.queries.Inspected`),
    least recently used out."""

    def __init__(self, size: int = 12):
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, Any] = OrderedDict()

    def remember(self, key: str, item: Any) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def find(self, key: str) -> Any | None:
        with self._lock:
            return self._items.get(key or "")

    def get(self, key: str) -> Any:
        """The cached outputs for ``key``; a clear error when they were evicted or never made."""
        item = self.find(key)
        if item is None:
            raise gr.Error("These query outputs are no longer cached; press 'Inspect queries' again.")
        return item


@dataclass
class Job:
    started: float
    base: str
    cancel: threading.Event = field(default_factory=threading.Event)
    events: queue.Queue = field(default_factory=queue.Queue)


class JobSlot:
    """The server's one fine-tune job: `start` runs it in a worker thread, or refuses while one runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: Job | None = None

    def start(self, base: str, produce: Callable[[Job], object]) -> Job:
        """Run ``produce(job)`` in a worker thread; its result or error arrives on ``job.events``."""
        with self._lock:
            if self.current is not None:
                minutes = (time.time() - self.current.started) / 60
                raise gr.Error(f"A fine-tune of {self.current.base} is already running ({minutes:.0f} min so far); "
                               "wait for it or cancel it.")
            job = self.current = Job(time.time(), base)

        def work():
            try:
                job.events.put(("done", produce(job)))
            except Exception as error:  # reported to the page; the registry is unchanged
                job.events.put(("error", error))
            finally:
                with self._lock:
                    self.current = None

        # In the caller's context: on ZeroGPU `spaces` reads the user's token from the Gradio request there.
        threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True).start()
        return job

    def cancel(self) -> bool:
        """Ask the running job to stop before its next step; False when none runs."""
        with self._lock:
            if self.current is None:
                return False
            self.current.cancel.set()
            return True


class AppState:
    """Everything a handler may reach. Build it after `datasets.database.configure_fiftyone`."""

    def __init__(self, config: AppConfig, data_dir: Path | None = None):
        self.config = config
        self.data_dir = Path(data_dir) if data_dir is not None else config.resolved_data_dir
        journal_dir = config.journal or (self.data_dir / "journal" if config.journal_repo else None)
        self.journal = Journal(journal_dir) if journal_dir is not None else None
        self.registry = Registry(self.data_dir / "models",
                                 on_added=self.journal.record_version if self.journal is not None else None)
        self.hardware = Hardware.detect(config.zero_gpu)
        # On ZeroGPU models stay on CPU here and run in the GPU worker: no CPU engine to prepare.
        self.models = ModelCache(self.registry.version_dir, cpu_bf16=config.cpu_bf16,
                                 engine="torch" if self.hardware.zero_gpu else config.engine,
                                 engine_cache=self.data_dir / "engines", capacity=config.model_cache,
                                 offered=self.model_choices if config.on_space else None,
                                 device=self.hardware.load_device)
        self.gpu = Gpu(self.hardware, self.models, chunk_s=config.zero_gpu_chunk_s)
        for root in (self.import_root, self.export_root):
            root.mkdir(parents=True, exist_ok=True)
        self.queries = QueryCache()
        self.job = JobSlot()
        self._store: ReviewStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> ReviewStore:
        """The review store, opened on first use; a `gr.Error` saying why when it cannot be."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = ReviewStore.open(self.config.dataset, self.data_dir)
                    self._store.journal = self.journal
                except ReviewError as error:
                    raise gr.Error(str(error)) from None
            return self._store

    def restore_from_journal(self) -> dict | None:
        """At start-up: with a journal configured, fill an empty review dataset from it and copy the
        model versions the registry lacks (`datasets.journal`). Returns the counts, or None."""
        if self.journal is None:
            return None
        return self.journal.restore(self.store, self.registry.root)

    @property
    def work_dir(self) -> Path:
        """Where the fine-tune job keeps its files (`training.job`)."""
        return self.data_dir / "finetune-work"

    def model_choices(self) -> list[str]:
        """The model picker's list: bundled, the hub models, ``config.models``, every fine-tuned version
        (newest first). On a Space these are the only models that load."""
        extra = [name for name in self.config.models if name.strip() and name not in HUB_MODELS]
        return model_choices([*HUB_MODELS, *extra], [version.name for version in reversed(self.registry.versions())])

    @property
    def import_root(self) -> Path:
        return self.data_dir / "imports"

    @property
    def export_root(self) -> Path:
        return self.data_dir / "exports"

    def server_path(self, text: str, purpose: str) -> Path:
        """A server folder named by the user, for ``purpose`` ``"import"`` or ``"export"``: relative
        names are taken under ``DATA/imports`` (``DATA/exports``), and the real path, links resolved,
        must lie under that folder or one of ``config.import_roots``. Anything else is refused."""
        default = self.import_root if purpose == "import" else self.export_root
        if not isinstance(text, str) or not text.strip():
            raise gr.Error(f"Give a folder under {default} (or a path relative to it).")
        if "\x00" in text or len(text) > 1024:
            raise gr.Error("That path is not usable (over 1024 characters or holding a NUL byte).")
        roots = [default, *self.config.import_roots]
        try:
            path = (default / Path(text.strip()).expanduser()).resolve()
            real_roots = [Path(root).expanduser().resolve() for root in roots]
        except (OSError, RuntimeError, ValueError) as error:
            raise gr.Error(f"{text[:80]!r} cannot be resolved as a path ({error}).") from None
        if not any(path == root or path.is_relative_to(root) for root in real_roots):
            where = ", ".join(str(root) for root in real_roots)
            raise gr.Error(f"{purpose.capitalize()} folders must lie under {where} (after following links); "
                           f"{text[:200]!r} does not. Put the files there, or ask the server's owner to add a root "
                           "with DETR_STUDIO_IMPORT_ROOTS.")
        return path

"""The server's state, in one object built once by `app.py` and handed to every handler.

`AppState` holds the settings (`app.config.AppConfig`), the data directory, the review store
(opened on first use), the model registry, the loaded models, the Queries tab's cache and the one
fine-tune job. Handlers are plain functions whose first argument is the state; `app.ui` binds them.
Tests build a state of their own instead of patching module globals.
"""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from app.config import HUB_MODELS, AppConfig
from app.models import ModelCache, model_choices
from app.queries import QueryCache
from app.train import JobSlot
from datasets.labels import ReviewError
from datasets.review import ReviewStore
from training.registry import Registry


class AppState:
    """Everything a handler may reach. Build it after `datasets.database.configure_fiftyone`."""

    def __init__(self, config: AppConfig, data_dir: Path | None = None):
        self.config = config
        self.data_dir = Path(data_dir) if data_dir is not None else config.resolved_data_dir
        self.registry = Registry(self.data_dir / "models")
        self.models = ModelCache(self.registry.version_dir, cpu_bf16=config.cpu_bf16)
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
                except ReviewError as error:
                    raise gr.Error(str(error)) from None
            return self._store

    @property
    def work_dir(self) -> Path:
        """Where the fine-tune job keeps its files (`training.job`)."""
        return self.data_dir / "finetune-work"

    def model_choices(self) -> list[str]:
        """The model picker's list: bundled, the hub models, every fine-tuned version (newest first)."""
        return model_choices(HUB_MODELS, [version.name for version in reversed(self.registry.versions())])

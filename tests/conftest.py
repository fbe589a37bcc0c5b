"""Shared fixtures: tiny random DETR-family models saved to disk, and an offline, isolated environment."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

# Tests never touch the network or the user's FiftyOne database. Set before any import of them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
# Exported ONNX graphs (core.engines) go to a cache of this run, shared by its tests, never the user's.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="detr-studio-cache-")
# A throwaway MongoDB for the whole run, started by pytest_configure and reached by URI. Not
# FiftyOne's own database service: that one is shared by every FiftyOne process of the user, so
# tests could attach to the user's database (or the user's FiftyOne to the tests').
_THROWAWAY_DB = tempfile.mkdtemp(prefix="detr-studio-mongo-")
_mongod: subprocess.Popen | None = None

import torch  # noqa: E402
from transformers import ConditionalDetrConfig, DetrConfig, ResNetConfig  # noqa: E402

from core.allocator import keep_freed_memory  # noqa: E402
from core.family import FAMILIES  # noqa: E402

LABELS = ["circle", "square", "triangle"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_mongod(dbpath: str | Path, port: int) -> subprocess.Popen:
    """The MongoDB that FiftyOne ships (fiftyone/db/bin/mongod) on ``dbpath``, listening on ``port``."""
    mongod = Path(importlib.util.find_spec("fiftyone").submodule_search_locations[0]) / "db" / "bin" / "mongod"
    process = subprocess.Popen(
        [str(mongod), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
         "--logpath", str(Path(dbpath) / "mongod.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test MongoDB ({mongod}) did not start; see {dbpath}/mongod.log")
            time.sleep(0.1)


def _xdist_controller(config) -> bool:
    """Whether this process hands the tests to pytest-xdist workers (and runs none itself)."""
    return not hasattr(config, "workerinput") and getattr(config.option, "dist", "no") != "no"


def pytest_configure(config):
    """Start a throwaway MongoDB on a free local port for the whole run; keep freed memory as the
    programs do (`core.allocator`), which spares the training tests much kernel time. Under
    pytest-xdist each worker starts its own; the controller, which runs no test, starts none."""
    global _mongod
    keep_freed_memory()
    if _xdist_controller(config):
        return
    port = free_port()
    _mongod = start_mongod(_THROWAWAY_DB, port)
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"


def pytest_unconfigure(config):
    if _mongod is not None:
        _mongod.terminate()
        _mongod.wait(timeout=60)
    shutil.rmtree(_THROWAWAY_DB, ignore_errors=True)


def tiny_config(kind: str = "detr", num_queries: int = 12, labels: list[str] = LABELS):
    """A DETR-family config small enough to run in milliseconds on a CPU."""
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage4"],
    )
    common = dict(
        backbone_config=backbone, d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=num_queries,
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    return DetrConfig(**common) if kind == "detr" else ConditionalDetrConfig(**common)


def tiny_model(kind: str = "detr", seed: int = 0, **config_overrides):
    """A tiny random model of ``kind``, its weights fixed by ``seed``; overrides set config attributes."""
    torch.manual_seed(seed)
    config = tiny_config(kind)
    for name, value in config_overrides.items():
        setattr(config, name, value)
    return FAMILIES[kind].model_class(config)


def save_tiny_model(directory: Path, kind: str = "detr", seed: int = 0, return_model: bool = False,
                    init_std: float = 0.3):
    """Save a tiny random model to ``directory``; return the directory (or the model itself).

    ``init_std`` sets the model's gain. At 0.3 queries differ clearly (good for thresholds and
    sorting) but outputs swing with small input changes; at 0.1 the model is calm enough for
    parity tolerances that mean something for a trained model.
    """
    model = tiny_model(kind, seed, init_std=init_std).eval()
    # Default init gives every query the same box and class; larger query embeddings and class
    # weights make queries differ, so thresholds, sorting and per-query checks mean something.
    with torch.no_grad():
        model.model.query_position_embeddings.weight.mul_(30)
        model.class_labels_classifier.weight.mul_(3 if kind == "detr" else 0.5)
    model.save_pretrained(directory)
    return model if return_model else directory


@pytest.fixture(scope="session")
def tiny_detr_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_detr"), "detr")


@pytest.fixture(scope="session")
def tiny_conditional_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_conditional_detr"), "conditional_detr")


@pytest.fixture(scope="session", params=["detr", "conditional_detr"])
def calm_model_dir(request, tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp(f"calm_{request.param}"), request.param, init_std=0.1)


@pytest.fixture(params=["detr", "conditional_detr"])
def tiny_model_dir(request, tiny_detr_dir, tiny_conditional_dir) -> Path:
    return tiny_detr_dir if request.param == "detr" else tiny_conditional_dir


@pytest.fixture
def state(tmp_path):
    """A fresh app state: its own data directory, review dataset name, model and query caches."""
    from app.config import AppConfig
    from app.state import AppState

    # PyTorch runs the models of these tests; the engines have tests of their own (test_export.py).
    state = AppState(AppConfig(dataset=f"test-{uuid.uuid4().hex[:10]}", engine="torch"), tmp_path / "data")
    yield state
    if state._store is not None:
        state._store.dataset.delete()


def state_with(state, **settings):
    """Another app state on ``state``'s data directory and review dataset, with some settings changed
    (a Space's ``space_id``, ``trainers``, ``queue_size``...), as a differently configured server."""
    import dataclasses

    from app.state import AppState

    return AppState(dataclasses.replace(state.config, **settings), state.data_dir)


@pytest.fixture
def review_store(state):
    """The state's review dataset in the throwaway database (deleted afterwards)."""
    from datasets.review import ReviewStore

    store = state.store
    assert isinstance(store, ReviewStore)
    return store

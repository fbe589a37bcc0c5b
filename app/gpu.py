"""Where the app's tensor work runs: here, or on a ZeroGPU Space inside ``@spaces.GPU``.

Three kinds of hardware (`Hardware.detect`):

- ``cpu`` and ``gpu``: models load once into the process (CUDA when there is one) and every
  handler runs them in its own thread; a fine-tune is one job in a thread, with live progress and
  cancel, beside detection.
- ``zero-gpu`` (ZeroGPU sets ``SPACES_ZERO_GPU=true``; Spaces install `spaces` on *every* Gradio
  Space, so the package being importable says nothing): `spaces` makes ``torch.cuda.is_available()``
  true in every thread, but real CUDA may start only inside a ``@spaces.GPU`` function, which runs
  in a forked worker with pickled arguments and results. So models load on CPU in the main process
  (`ModelCache` there) and every piece of tensor work goes through `Gpu.call`: numpy in, numpy
  out, the function looked up by name in the worker. The worker is a fork of this process, so it
  finds the models loaded before the fork in its copy of the cache and loads the others itself.

A fine-tune on ZeroGPU runs as chunks (`training.job.run_chunk`) of ``chunk_s`` seconds each, in
the calling user's context (their quota is charged), each retried with back-off when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.inference import QueryOutputs, predict
from core.loading import Detector, load_detector_or_bundled
from training.job import JOB_FILE, read_job, run_chunk, write_json

ZERO_GPU_CHUNK_S = 60.0  # a ZeroGPU call's duration for one fine-tune chunk (ZeroGPU's default slice)
STARTUP_GUESS_S = 15.0  # fork, CUDA start and moving the weights, until the first chunk has been timed
CHUNK_RETRIES = 3  # a failed chunk is tried again this often (after 5, 10, 20 s)
RETRY_DELAY_S = 5.0


@dataclass(frozen=True)
class Hardware:
    """What the app runs on: ``"cpu"``, ``"gpu"`` (CUDA in this process) or ``"zero-gpu"``."""

    kind: str

    @classmethod
    def detect(cls, zero_gpu: bool) -> Hardware:
        """``zero_gpu``: the Space says so (``SPACES_ZERO_GPU``). Otherwise CUDA decides; on ZeroGPU
        ``torch.cuda.is_available()`` is true everywhere, so it is not asked there."""
        if zero_gpu:
            return cls("zero-gpu")
        return cls("gpu" if torch.cuda.is_available() else "cpu")

    @property
    def zero_gpu(self) -> bool:
        return self.kind == "zero-gpu"

    @property
    def load_device(self) -> str | None:
        """Where models load: CPU on ZeroGPU (CUDA is only real inside the GPU worker), else the default."""
        return "cpu" if self.zero_gpu else None


class _Raised:
    """An exception raised inside the GPU worker, carried back as a value: `spaces` reports only the
    class name of one that crosses the fork, and the user should read its message."""

    def __init__(self, error: BaseException):
        try:
            import pickle

            pickle.dumps(error)
            self.error = error
        except Exception:  # an exception that cannot be pickled: keep its text
            self.error = RuntimeError(f"{type(error).__name__}: {error}")


def _in_worker(fn: Callable, args: tuple, kwargs: dict, duration_s: float):
    """The one function ZeroGPU runs (``duration_s`` is read by `spaces` for the schedule)."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        return _Raised(error)


def _requested(fn: Callable, args: tuple, kwargs: dict, duration_s: float) -> int:
    return max(1, int(round(duration_s)))


_models = None  # the main process's ModelCache; a forked GPU worker reads its copy
_worker_detectors: dict[str, Detector] = {}  # models a worker loaded itself (after its fork)


def _worker_detector(name: str) -> Detector:
    """The detector ``name`` in the GPU worker, on the worker's device (CUDA when it has one)."""
    detector = _worker_detectors.get(name)
    if detector is None:
        # No lock here: the cache's lock may have been held by another thread at the moment of the fork.
        detector = (_models.peek(name) if _models is not None else None) or load_detector_or_bundled(
            name, device="cpu", version_dir=_models.version_dir if _models is not None else None)
        if torch.cuda.is_available():
            detector.model.to("cuda")
        _worker_detectors[name] = detector
    return detector


def predict_by_name(name: str, images: list[np.ndarray], shortest_edge: int | None = None,
                    attention_layers: Sequence[int] | None = None) -> list[QueryOutputs]:
    """`core.inference.predict` with the detector looked up by name (what crosses into the worker)."""
    return predict(_worker_detector(name), images, shortest_edge=shortest_edge, attention_layers=attention_layers)


class Gpu:
    """Runs the app's tensor work where the hardware wants it (see the module docstring)."""

    def __init__(self, hardware: Hardware, models=None, chunk_s: float = ZERO_GPU_CHUNK_S):
        global _models
        self.hardware, self.chunk_s = hardware, chunk_s
        self._on_gpu = None
        if hardware.zero_gpu:
            import spaces

            _models = models
            self._on_gpu = spaces.GPU(duration=_requested)(_in_worker)

    def call(self, fn: Callable, *args, duration_s: float = 30, **kwargs):
        """``fn(*args, **kwargs)``; on ZeroGPU inside ``@spaces.GPU`` for ``duration_s`` seconds
        (``fn`` and its arguments are pickled: a module-level function, plain data)."""
        if self._on_gpu is None:
            return fn(*args, **kwargs)
        result = self._on_gpu(fn, args, kwargs, duration_s)
        if isinstance(result, _Raised):
            raise result.error
        return result

    def predict(self, detector: Detector, images: Sequence, shortest_edge: int | None = None,
                attention_layers: Sequence[int] | None = None) -> list[QueryOutputs]:
        """`core.inference.predict` of ``detector`` (loaded by the app's `ModelCache`) on decoded images."""
        if self._on_gpu is None:
            return predict(detector, images, shortest_edge=shortest_edge, attention_layers=attention_layers)
        arrays = [np.asarray(image) for image in images]
        duration = 10 + 2 * len(arrays) + (10 if attention_layers else 0)
        return self.call(predict_by_name, detector.name, arrays, shortest_edge, attention_layers, duration_s=duration)

    def chunk_runner(self, notify: Callable[[str], None] | None = None) -> tuple[Callable[..., str], float | None]:
        """``(run, chunk_s)`` for `training.job.continue_job`: `run_chunk` itself off ZeroGPU (one
        job, live progress and cancel); on ZeroGPU chunks of ``chunk_s`` seconds in the GPU worker,
        each retried `CHUNK_RETRIES` times with back-off, ``notify`` told why. Callbacks cannot cross
        the fork: the epochs a chunk validated are reported from the job file afterwards."""
        if self._on_gpu is None:
            return run_chunk, None
        notify = notify or (lambda message: None)

        def run(work_dir, progress=None, on_epoch=None, cancel=None, budget_s=None, clock=None) -> str:
            job_file = Path(work_dir) / JOB_FILE
            for attempt in range(CHUNK_RETRIES + 1):
                if cancel is not None and cancel.is_set():
                    return "cancelled"
                job = read_job(Path(work_dir))
                seen, startup_s = len(job["history"]), job.get("startup_s", STARTUP_GUESS_S)
                started = time.monotonic()
                try:
                    status, inside_s = self.call(_timed_chunk, str(work_dir), max(budget_s - startup_s, 1.0),
                                                 duration_s=budget_s)
                except Exception as error:  # the worker died, ZeroGPU refused, the chunk raised
                    if attempt == CHUNK_RETRIES:
                        raise RuntimeError(f"a GPU chunk of the fine-tune failed {attempt + 1} times, the last with "
                                           f"{error}; the job is kept and continues from its last checkpoint when the "
                                           "app restarts") from error
                    delay = RETRY_DELAY_S * 2 ** attempt
                    notify(f"A GPU chunk failed ({error}); trying again in {delay:.0f} s "
                           f"(attempt {attempt + 2} of {CHUNK_RETRIES + 1}).")
                    if cancel is not None and cancel.wait(delay):  # Cancel is heard during the wait too
                        return "cancelled"
                    if cancel is None:
                        time.sleep(delay)
                    continue
                job = read_job(Path(work_dir))
                # What the call took beyond the chunk's own work (fork, CUDA, moving weights): kept free next time.
                job["startup_s"] = round(max(time.monotonic() - started - inside_s, 0.0), 3)
                write_json(job_file, job)
                for record in job["history"][seen:]:
                    if on_epoch is not None:
                        on_epoch(record)
                notify(f"ZeroGPU chunk ended ({status}) at step {job['steps']}, {job['seconds'] / 60:.1f} min of "
                       f"training so far" + (f"; validation AP {job['history'][-1]['val_AP']:.3f} after epoch "
                                             f"{job['history'][-1]['epoch']}" if job["history"] else "") + ".")
                return status
            raise AssertionError("unreachable")

        return run, self.chunk_s


def _timed_chunk(work_dir: str, budget_s: float) -> tuple[str, float]:
    started = time.monotonic()
    status = run_chunk(Path(work_dir), budget_s=budget_s)
    return status, time.monotonic() - started

"""CPU inference engines for a loaded detector: PyTorch itself, ONNX Runtime or OpenVINO.

    note = attach_engine(detector, "onnxruntime", cache_dir)   # None, or why PyTorch runs instead
    predict(detector, images)                                   # now runs the engine (no attention maps)

ONNX Runtime and OpenVINO run the graph of `core.export` (exported once per weights digest into
``cache_dir`` and reused). An engine replaces only the model's forward pass; preprocessing and
every query's post-processing stay the project's own, so the outputs have the same meaning
whichever engine ran. Where the attention maps are needed (the Queries tab), `core.inference`
runs PyTorch. An engine that is not installed, cannot export the model or cannot load the graph
is never an error: the detector keeps PyTorch and the returned note says why.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch

from core.loading import Detector

logger = logging.getLogger(__name__)

ENGINES = ("torch", "onnxruntime", "openvino")
# The default for CPU inference: the fastest engine that kept the pipeline's accuracy (every
# query's label equal, scores within 1e-3) in bench/detect_cpu.py (docs/benchmarks.md).
DEFAULT_ENGINE = "openvino"


class OnnxRuntimeEngine:
    """``(pixel_values [B,3,H,W], pixel_mask [B,H,W]) -> (logits, pred_boxes)`` with ONNX Runtime."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixel_values: np.ndarray, pixel_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, boxes = self.session.run(["logits", "pred_boxes"],
                                         {"pixel_values": pixel_values, "pixel_mask": pixel_mask})
        return logits, boxes


class OpenVinoEngine:
    """The same with OpenVINO on the CPU; ``precision`` ``"f32"`` keeps fp32 arithmetic, ``"bf16"``
    lets it use bf16 where the CPU has it (faster, less exact)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "f32"):
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": precision,
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, several server threads

    def __call__(self, pixel_values: np.ndarray, pixel_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            results = self._request.infer({"pixel_values": pixel_values, "pixel_mask": pixel_mask})
            outputs = {output.get_any_name(): value for output, value in results.items()}
            return np.array(outputs["logits"]), np.array(outputs["pred_boxes"])


ENGINE_CLASSES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}
ENGINE_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def default_cache_dir() -> Path:
    """Where command lines keep exported graphs: ``$XDG_CACHE_HOME/detr-studio/engines`` (``~/.cache/...``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detr-studio" / "engines"


def engine_problem(name: str) -> str | None:
    """What is wrong with an engine name, for the user; None when it is one of `ENGINES`."""
    if name not in ENGINES:
        return f"engine must be one of {', '.join(ENGINES)}; got {name!r}."
    return None


def attach_engine(detector: Detector, name: str, cache_dir: Path, threads: int | None = None,
                  own_process: bool = False) -> str | None:
    """Run ``detector``'s CPU inference with engine ``name`` from now on.

    Returns None when it does, else a note saying why PyTorch runs instead (the engine is not
    installed, the model could not be exported, the graph does not load). On a GPU the model
    stays PyTorch's (bf16 there is already fast). ``own_process``: export in a process of its own
    (`core.export.cached_export`), as a server that keeps detecting meanwhile must.
    """
    if problem := engine_problem(name):
        raise ValueError(problem)
    detector.engine, detector.engine_name = None, "torch"
    if name == "torch":
        return None
    if detector.device.type != "cpu":
        return f"the {name} engine is for CPU inference; this model runs on {detector.device.type} with PyTorch."
    from core.export import cached_export

    try:
        importlib.import_module(ENGINE_PACKAGES[name])  # before exporting: a missing package costs no export
        engine = ENGINE_CLASSES[name](cached_export(detector, cache_dir, own_process=own_process), threads)
    except Exception as error:  # any engine failure means "use PyTorch", said in the note
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        logger.warning("engine %s unavailable for %s: %s", name, detector.name, reason)
        return f"The {name} engine could not run {detector.name} ({reason}); PyTorch runs it instead."
    detector.engine, detector.engine_name = engine, name
    return None

"""One function, `load_detector`, loads every model the project uses.

A model is named by a Hugging Face hub id (``facebook/detr-resnet-50``), a local directory in
``save_pretrained`` layout, or ``bundled`` (the small default model in ``assets/bundled``).
Official DETR checkpoints store their ResNet under timm's parameter names; timm needs torchvision,
which we do not install, so such checkpoints are loaded into transformers' own ResNet by rewriting
the config and renaming the weights on load (`core.timm_weights`).
Weights are read from safetensors only: pickled ``.bin``/``.pt`` files can run code when loaded.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from core.family import FAMILIES, ModelFamily
from core.timm_weights import UnsupportedBackbone, native_backbone_config, timm_key_mapping

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUNDLED_NAME = "bundled"
BUNDLED_DIR = ASSETS_DIR / "bundled"
VERSION_PREFIX = "version:"  # a fine-tuned version in a registry, e.g. version:v0003
MAX_NAME_LENGTH = 1000

# What DetrImageProcessor uses when a checkpoint has no preprocessor_config.json.
DEFAULT_IMAGE_MEAN = (0.485, 0.456, 0.406)
DEFAULT_IMAGE_STD = (0.229, 0.224, 0.225)
DEFAULT_SHORTEST_EDGE = 800
DEFAULT_LONGEST_EDGE = 1333

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelLoadError(ValueError):
    """A model could not be loaded. The message names the model, the reason and the fix."""


class HubUnreachableError(ModelLoadError):
    """A hub id could not be fetched (no network, or not cached). The bundled model may stand in."""


@dataclass
class PreprocessConfig:
    """What preprocessing needs to know about a model: normalization and the resize rule."""

    image_mean: tuple[float, float, float] = DEFAULT_IMAGE_MEAN
    image_std: tuple[float, float, float] = DEFAULT_IMAGE_STD
    shortest_edge: int = DEFAULT_SHORTEST_EDGE  # resize so the shorter side is this...
    longest_edge: int = DEFAULT_LONGEST_EDGE  # ...unless the longer side would exceed this


@dataclass
class Detector:
    """A loaded model with everything inference needs.

    ``labels[i]`` is the name of class id ``i``; the model's extra "no object" logit (DETR) is not
    in the list. ``family`` says how its class scores are read (`core.family`).
    """

    model: PreTrainedModel
    labels: list[str]
    family: ModelFamily
    name: str
    source: Path
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    note: str | None = None  # shown to the user, e.g. why a fallback model is in use
    # bf16 autocast on CPU too (on CUDA it is always on): ~1.8x faster on CPUs with AVX512-BF16 or
    # AMX (bench/detect_cpu.py), scores then differ from fp32 by up to ~1e-2. Off by default.
    cpu_bf16: bool = False
    # The CPU engine that runs the forward pass when no attention maps are needed (`core.engines`);
    # None: PyTorch. ``engine_name`` says which ran, for status lines.
    engine: Any = None
    engine_name: str = "torch"
    # Class-wise duplicate removal (NMS) at this IoU after the forward pass (`core.inference.without_duplicates`):
    # config.json's ``duplicate_iou``, which a fine-tune sets when it removed duplicates of a new class on its
    # validation split (docs/fine-tuning.md). None (hub models, the bundled one): every query stands, as DETR intends.
    duplicate_iou: float | None = None
    # The test-time flip (`core.inference.flip_fused`): each image also runs mirrored and the two passes are fused;
    # config.json's ``test_time_flip``, which a fine-tune sets when it raised AP on its validation split. Twice the
    # forward passes. False (hub models, the bundled one): one pass.
    test_time_flip: bool = False

    @property
    def kind(self) -> str:
        """The family's name (config.json's ``model_type``)."""
        return self.family.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_queries(self) -> int:
        return int(self.model.config.num_queries)


MAX_JSON_BYTES = 10_000_000  # a config or preprocessor file is a few KB; this is not one


def read_json_object(path: Path, where: str) -> dict:
    """The JSON object in ``path``, or a `ModelLoadError` naming the file and what is wrong with it
    (not UTF-8, not JSON, nested too deep for the parser, not an object, absurdly large)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ModelLoadError(f"{where}: {path.name} is {path.stat().st_size / 1e6:.0f} MB, too large for a "
                                 "configuration file.")
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:120]
        raise ModelLoadError(f"{where} has a {path.name} that is not valid JSON ({reason}).") from None
    except OSError as error:
        raise ModelLoadError(f"{where}: {path.name} could not be read ({error.strerror or error}).") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{where} has a {path.name} that is not a JSON object.")
    return document


def _labels_from_config(config: PreTrainedModel, where: str) -> list[str]:
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    num_labels = config.num_labels
    if sorted(id2label) != list(range(num_labels)):
        raise ModelLoadError(
            f"{where} has id2label keys {sorted(id2label)[:10]}... that are not 0..{num_labels - 1}; "
            "fix config.json so every class id has a name."
        )
    return [str(id2label[i]) for i in range(num_labels)]


def _duplicate_iou(config: PreTrainedModel, where: str) -> float | None:
    value = getattr(config, "duplicate_iou", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ModelLoadError(f"{where} has a config.json whose duplicate_iou is {value!r}; it must be a number "
                             "between 0 and 1 (the IoU above which the lower-scoring of two detections of one "
                             "class is dropped) or absent. Fix or remove it.")
    return float(value)


def _test_time_flip(config: PreTrainedModel, where: str) -> bool:
    value = getattr(config, "test_time_flip", None)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ModelLoadError(f"{where} has a config.json whose test_time_flip is {value!r}; it must be true, false "
                             "or absent (whether each image is also run mirrored). Fix or remove it.")
    return value


def _preprocess_config(directory: Path, where: str) -> PreprocessConfig:
    """preprocessor_config.json's normalization and sizes, each checked (three finite numbers, a
    positive std, sizes of 32-4096 px), so a bad file is refused here, not midway through inference."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        return PreprocessConfig()
    raw = read_json_object(path, where)
    size = raw.get("size") or {}
    problem = ModelLoadError(f"{where} has a preprocessor_config.json with invalid values: image_mean and image_std "
                             "need three finite numbers (std above 0), size.shortest_edge / longest_edge whole "
                             "numbers of 32-4096 pixels. Fix or delete the file.")
    try:
        mean = tuple(float(v) for v in raw.get("image_mean", DEFAULT_IMAGE_MEAN))
        std = tuple(float(v) for v in raw.get("image_std", DEFAULT_IMAGE_STD))
        shortest = int(size.get("shortest_edge", DEFAULT_SHORTEST_EDGE)) if isinstance(size, dict) else -1
        longest = int(size.get("longest_edge", raw.get("max_size", DEFAULT_LONGEST_EDGE))) if isinstance(size, dict) \
            else -1
    except (TypeError, ValueError, OverflowError):
        raise problem from None
    if (len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0
            or not 32 <= shortest <= 4096 or not 32 <= longest <= 4096):
        raise problem
    return PreprocessConfig(image_mean=mean, image_std=std, shortest_edge=shortest, longest_edge=longest)


def _check_weight_files(directory: Path, where: str) -> None:
    """Every safetensors file opens: a truncated or damaged one is named here, before transformers meets it."""
    from safetensors import safe_open

    for shard in sorted(directory.glob("model*.safetensors")):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors' own error type; any failure means a damaged file
            raise ModelLoadError(f"{where}: {shard.name} is damaged or truncated ({str(error)[:120]}); copy "
                                 "the model folder again or re-save it with save_pretrained.") from None


def _check_weights(directory: Path, where: str) -> None:
    """The folder has safetensors weights; pickles are refused."""
    if any(directory.glob("model*.safetensors")):
        return
    if (directory / "model.safetensors.index.json").is_file():
        raise ModelLoadError(f"{where} has model.safetensors.index.json but none of the weight files it lists.")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{where} has weights only as {', '.join(pickles)} (pickle), which DETR Studio does not load "
            "because unpickling can run arbitrary code. Convert them once, where you trust the file: "
            "`model = AutoModelForObjectDetection.from_pretrained(dir); model.save_pretrained(dir)` "
            "writes model.safetensors."
        )
    raise ModelLoadError(f"{where} has no model.safetensors; it is not a save_pretrained directory.")


def _fetch_from_hub(repo_id: str) -> Path:
    """Download (or find in the cache) the files a DETR checkpoint needs; never pickles."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json",
                "model-*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass  # not cached yet: fetch it
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"'{repo_id}' is not a model on the Hugging Face hub (or it is private); check the name."
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        reason = str(error).strip().splitlines()[0][:200]
        raise HubUnreachableError(
            f"Could not fetch '{repo_id}' from the Hugging Face hub ({reason}). To use it offline, "
            f"download it where there is network (`hf download {repo_id}`) and copy the folder here, "
            "then pass that directory as the model (or set HF_HOME to a cache that has it)."
        ) from None


VersionDir = Callable[[str], Path]  # "version:vNNNN" -> its directory; raises ModelLoadError


def resolve_model_dir(name: str | Path, version_dir: VersionDir | None = None) -> Path:
    """Turn a model name into a local directory: ``bundled``, ``version:vNNNN`` (looked up with
    ``version_dir``, which a model registry provides), a directory, or a hub id."""
    name_str = str(name)
    if len(name_str) > MAX_NAME_LENGTH:
        raise ModelLoadError(f"A model name of {len(name_str)} characters is too long; give a hub id, a folder "
                             f"or '{BUNDLED_NAME}'.")
    if "\x00" in name_str:
        raise ModelLoadError("The model name contains a NUL character; give a hub id, a folder or 'bundled'.")
    if name_str.startswith(VERSION_PREFIX):
        if version_dir is None:
            raise ModelLoadError(f"{name_str} names a fine-tuned version, but no model registry (data directory) "
                                 "is in use here; pass its folder instead.")
        return version_dir(name_str)
    if name_str == BUNDLED_NAME:
        if not (BUNDLED_DIR / "config.json").is_file():
            raise ModelLoadError(
                f"The bundled model is missing from this checkout ({BUNDLED_DIR}); "
                "pass a hub id or a local model directory instead."
            )
        return BUNDLED_DIR
    path = Path(name_str).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a name too long for the file system, or one it cannot hold
        exists = False
    if exists:
        if not path.is_dir():
            raise ModelLoadError(
                f"'{name_str}' is a file; pass the directory that holds config.json and model.safetensors."
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"'{name_str}' has no config.json; it is not a save_pretrained directory.")
        return path
    if HUB_ID.match(name_str):
        return _fetch_from_hub(name_str)
    raise ModelLoadError(
        f"'{name_str}' is neither a local directory, a hub id like facebook/detr-resnet-50, nor '{BUNDLED_NAME}'."
    )


def load_detector(
    name: str | Path,
    device: str | torch.device | None = None,
    attn_implementation: str = "eager",
    version_dir: VersionDir | None = None,
) -> Detector:
    """Load a DETR or Conditional DETR detector by name.

    Args:
        name: a hub id, a ``save_pretrained`` directory, ``"bundled"``, or ``"version:vNNNN"``
            (a fine-tuned version, found with ``version_dir``, e.g. ``Registry.version_dir``).
        device: where to put the model; CUDA when available by default.
        attn_implementation: ``"eager"`` (default) returns the decoder cross-attention maps the
            Queries view needs; ``"sdpa"`` is faster but returns no attention weights.

    Raises:
        ModelLoadError: the name cannot be resolved, the architecture is not DETR-family, the
            weights are pickles or do not match the config. `HubUnreachableError` (a subclass)
            when a hub id cannot be fetched.

    Example::

        detector = load_detector("facebook/detr-resnet-50", device="cpu")
        detector.labels[1], detector.num_queries  # ('person', 100)
    """
    directory = resolve_model_dir(name, version_dir)
    where = f"The model '{name}'" + (f" ({directory})" if str(directory) != str(name) else "")
    raw_config = read_json_object(directory / "config.json", where)
    model_type = raw_config.get("model_type")
    if model_type not in FAMILIES:
        raise ModelLoadError(
            f"{where} is a '{model_type}' model; DETR Studio loads {' and '.join(FAMILIES)} checkpoints."
        )
    _check_weights(directory, where)
    family = FAMILIES[model_type]
    try:
        raw_config, converted = native_backbone_config(raw_config, where)
    except UnsupportedBackbone as error:
        raise ModelLoadError(str(error)) from None
    try:
        config = family.config_class.from_dict(raw_config)
    except Exception as error:  # transformers validates fields with error types of its own
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{where} has a config.json transformers cannot read ({reason}).") from None
    duplicate_iou, test_time_flip = _duplicate_iou(config, where), _test_time_flip(config, where)

    _check_weight_files(directory, where)
    try:
        model, info = family.model_class.from_pretrained(
            directory,
            config=config,
            key_mapping=timm_key_mapping() if converted else None,
            use_safetensors=True,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
    except (RuntimeError, ValueError, OSError, TypeError, KeyError) as error:
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{where} could not be loaded: its weights do not fit its config ({reason}).") from None
    problems = {kind: keys for kind, keys in info.items() if kind != "error_msgs" and keys}
    if problems or info.get("error_msgs"):
        detail = "; ".join(f"{kind}: {sorted(map(str, keys))[:5]}" for kind, keys in problems.items())
        raise ModelLoadError(
            f"{where} does not match its config.json ({detail or info.get('error_msgs')}). "
            "Re-save it with save_pretrained, or pass the config it was trained with."
        )

    model.eval()
    target = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # channels-last convolutions: ~1.4x faster for a ResNet-50 on CPU (bench/detect_cpu.py), and on GPU
    model.to(target, memory_format=torch.channels_last)
    return Detector(
        model=model,
        labels=_labels_from_config(config, where),
        family=family,
        name=str(name),
        source=directory,
        preprocess=_preprocess_config(directory, where),
        duplicate_iou=duplicate_iou,
        test_time_flip=test_time_flip,
    )


def load_detector_or_bundled(name: str | Path, device: str | torch.device | None = None,
                             version_dir: VersionDir | None = None) -> Detector:
    """`load_detector`, falling back to the bundled model when a hub id cannot be fetched.

    Only an unreachable hub triggers the fallback; a broken local checkpoint is still an error.
    The returned detector's ``note`` says why the fallback happened, for the UI and the CLI.
    """
    try:
        return load_detector(name, device, version_dir=version_dir)
    except HubUnreachableError as error:
        if str(name) == BUNDLED_NAME or not (BUNDLED_DIR / "config.json").is_file():
            raise
        logger.info("hub unreachable, falling back to the bundled model: %s", error)
        detector = load_detector(BUNDLED_NAME, device)
        detector.note = f"{error} Showing the bundled model (trained on synthetic shapes) instead."
        return detector

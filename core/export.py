"""ONNX export of any model the project loads: every query's logits and boxes, dynamic batch and size.

    python -m core.export MODEL --out DIR [--attention] [--check 480x640 800x1066 ...]

``MODEL`` is anything `core.loading.load_detector` loads (hub id, folder, ``bundled``). ``DIR``
receives ``model.onnx`` and ``export.json`` (labels, family, preprocessing, the weights' digest and
the measured difference to the PyTorch model). The graph, for an image batch padded to one size:

| name | shape | meaning |
| --- | --- | --- |
| input ``pixel_values`` | ``[B, 3, H, W]`` float32 | normalized pixels (see ``export.json`` "preprocess") |
| input ``pixel_mask`` | ``[B, H, W]`` int64 | 1 on real pixels, 0 on padding |
| output ``logits`` | ``[B, Q, C(+1)]`` | class logits of every query (DETR: the last column is "no object") |
| output ``pred_boxes`` | ``[B, Q, 4]`` | normalized (cx, cy, w, h) of every query |
| output ``cross_attentions`` (``--attention``) | ``[L, B, heads, Q, h*w]`` | decoder cross-attention of every layer |

The export is checked against the PyTorch model with ONNX Runtime on several image sizes before it
is written; a graph that disagrees is not kept. Run without this project (docs/benchmarks.md shows
the few lines of ONNX Runtime it takes).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.flags import add_flags, from_flags
from core.loading import Detector, ModelLoadError, load_detector

MODEL_FILE, INFO_FILE = "model.onnx", "export.json"
EXPORT_FORMAT = 2  # bump when the graph's inputs or outputs change: cached exports are then rebuilt
CHECK_SIZES = ((480, 640), (800, 1066), (600, 400))  # (height, width) the export is compared at
TOLERANCE = 1e-3  # max |ONNX - PyTorch| on probabilities and boxes that an export may keep


class ExportError(RuntimeError):
    """The model could not be exported, or the export disagrees with PyTorch; nothing was kept."""


def _nearest_mask(pixel_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``interpolate(pixel_mask[None].float(), size)[0].bool()`` as ONNX runs it exactly.

    PyTorch's nearest takes source index ``floor(i * (float(in) / out))``; ONNX's Resize divides by
    ``out / in`` instead, which lands one pixel short where the product is a whole number (120 -> 4
    columns: source 89, not 90), so a padded batch's mask differs. Written with the same float32
    arithmetic as PyTorch, as index ops that ONNX runs as they are. ``pixel_mask``: [B, H, W].
    """
    height, width = pixel_mask.shape[-2:]
    rows = [torch.floor(torch.arange(n, device=pixel_mask.device, dtype=torch.float32)
                        * (torch.tensor(total, dtype=torch.float32) / n)).long().clamp(max=total - 1)
            for n, total in ((size[0], height), (size[1], width))]
    return pixel_mask[:, rows[0]][:, :, rows[1]].bool()


def _conv_encoder_forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
    """transformers' DETR / Conditional DETR ``ConvEncoder.forward`` with `_nearest_mask`."""
    features = self.model(pixel_values)
    if isinstance(features, dict):
        features = features.feature_maps
    return [(feature_map, _nearest_mask(pixel_mask, feature_map.shape[-2:])) for feature_map in features]


@contextlib.contextmanager
def _exact_masks(model: nn.Module):
    """Swap `_conv_encoder_forward` into the model's conv encoder while it is exported."""
    encoder = model.model.backbone
    if not type(encoder).__name__.endswith("ConvEncoder"):
        raise ExportError(f"cannot export {type(encoder).__name__}: expected DETR's or Conditional DETR's conv encoder.")
    encoder.forward = types.MethodType(_conv_encoder_forward, encoder)
    try:
        yield
    finally:
        del encoder.forward


class _Graph(nn.Module):
    """What is exported: the detector's forward with plain tensor inputs and outputs."""

    def __init__(self, model: nn.Module, attention: bool):
        super().__init__()
        self.model, self.attention = model, attention

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, output_attentions=self.attention)
        if self.attention:
            return out.logits, out.pred_boxes, torch.stack(out.cross_attentions)
        return out.logits, out.pred_boxes


def weights_digest(detector: Detector) -> str:
    """SHA-256 of the model's config and weight files: an export is reused only for the same weights."""
    digest = hashlib.sha256(f"format {EXPORT_FORMAT}".encode())
    files = sorted(Path(detector.source).glob("model*.safetensors")) + [Path(detector.source) / "config.json"]
    for path in files:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(json.dumps(detector.model.config.id2label, sort_keys=True).encode())
    return digest.hexdigest()


@dataclass
class ExportInfo:
    """``export.json``: what a user of the graph needs, and how closely it matches PyTorch."""

    model: str
    family: str
    labels: list[str]
    digest: str
    attention: bool
    preprocess: dict
    num_queries: int
    format: int = EXPORT_FORMAT
    torch_version: str = torch.__version__
    max_diff: dict[str, float] = field(default_factory=dict)  # per checked size: max |prob diff|, |box diff|


def _reference(graph: _Graph, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[np.ndarray]:
    with torch.inference_mode():
        return [t.float().numpy() for t in graph(pixel_values, pixel_mask)]


def _probabilities(logits: np.ndarray, no_object: bool) -> np.ndarray:
    if no_object:
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)
    return 1 / (1 + np.exp(-logits))


def _check_inputs(height: int, width: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of one padded size; the second image is narrower, as in a mixed-size batch."""
    generator = torch.Generator().manual_seed(height * 10_000 + width)
    pixels = torch.randn(batch, 3, height, width, generator=generator)
    mask = torch.ones(batch, height, width, dtype=torch.long)
    if batch > 1:
        mask[1:, :, width * 3 // 4:] = 0
        pixels[1:, :, :, width * 3 // 4:] = 0
    return pixels, mask


def export_onnx(detector: Detector, out_dir: Path, attention: bool = False,
                check_sizes: Sequence[tuple[int, int]] = CHECK_SIZES) -> ExportInfo:
    """Export ``detector`` to ``out_dir/model.onnx`` with ``export.json`` beside it.

    The graph is written to a temporary folder, compared with the PyTorch model through ONNX
    Runtime at each of ``check_sizes`` (batch 2, one image padded), and moved into place only when
    every probability and box is within `TOLERANCE`. Raises `ExportError` otherwise; ``out_dir``
    is then as it was.
    """
    import onnxruntime

    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(p.name not in (MODEL_FILE, INFO_FILE) for p in out_dir.iterdir()):
        raise ExportError(f"{out_dir} holds other files; export into an empty folder (or an earlier export's).")
    model = detector.model.float().eval()
    if next(model.parameters()).device.type != "cpu":
        raise ExportError("export the model from the CPU (load it with device='cpu').")
    if attention and getattr(model.config, "_attn_implementation", "eager") != "eager":
        raise ExportError("cross-attention outputs need a model loaded with attn_implementation='eager'.")
    graph = _Graph(model, attention).eval()
    pixels, mask = _check_inputs(*check_sizes[0], batch=2)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        batch, height, width = (torch.export.Dim("batch", max=1024), torch.export.Dim("height", min=32, max=8192),
                                torch.export.Dim("width", min=32, max=8192))
        outputs = ["logits", "pred_boxes"] + (["cross_attentions"] if attention else [])
        with warnings.catch_warnings(), _exact_masks(model):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(graph, (pixels, mask), str(tmp / MODEL_FILE), dynamo=True,
                                  input_names=["pixel_values", "pixel_mask"], output_names=outputs,
                                  dynamic_shapes={"pixel_values": {0: batch, 2: height, 3: width},
                                                  "pixel_mask": {0: batch, 1: height, 2: width}},
                                  external_data=False, verbose=False)
            except Exception as error:  # the exporter's own errors have many types; say what failed
                raise ExportError(f"torch.onnx.export failed for {detector.name}: {str(error).splitlines()[0]}") from None
        session = onnxruntime.InferenceSession(str(tmp / MODEL_FILE), providers=["CPUExecutionProvider"])
        info = ExportInfo(model=detector.name, family=detector.family.name, labels=list(detector.labels),
                          digest=weights_digest(detector), attention=attention,
                          preprocess=asdict(detector.preprocess), num_queries=detector.num_queries)
        for size in check_sizes:
            pixels, mask = _check_inputs(*size, batch=2)
            theirs = session.run(None, {"pixel_values": pixels.numpy(), "pixel_mask": mask.numpy()})
            ours = _reference(graph, pixels, mask)
            no_object = detector.family.no_object
            prob = float(np.abs(_probabilities(theirs[0], no_object) - _probabilities(ours[0], no_object)).max())
            box = float(np.abs(theirs[1] - ours[1]).max())
            info.max_diff[f"{size[0]}x{size[1]}"] = max(prob, box)
            if not max(prob, box) <= TOLERANCE:
                raise ExportError(f"the ONNX graph of {detector.name} differs from PyTorch by {max(prob, box):.2e} "
                                  f"at {size[0]}x{size[1]} (allowed {TOLERANCE}); it was not kept.")
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=1))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / INFO_FILE).unlink(missing_ok=True)  # export.json last: while it is missing, the folder is no export
        os.replace(tmp / MODEL_FILE, out_dir / MODEL_FILE)
        os.replace(tmp / INFO_FILE, out_dir / INFO_FILE)
        return info
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_export(detector: Detector, cache_dir: Path, attention: bool = False, own_process: bool = False) -> Path:
    """``model.onnx`` of ``detector`` under ``cache_dir/<digest>``, exported on first use and reused
    while the weights stay the same (a new version or changed weights get a new digest).
    ``own_process``: export in a process of its own (a server exporting beside inference must)."""
    digest = weights_digest(detector)
    folder = Path(cache_dir) / (digest[:24] + ("-attention" if attention else ""))
    info = folder / INFO_FILE
    if not (info.is_file() and (folder / MODEL_FILE).is_file()
            and json.loads(info.read_text()).get("digest") == digest):
        if own_process:
            _export_in_own_process(detector.source, folder, attention)
        else:
            export_onnx(detector, folder, attention)
    return folder / MODEL_FILE


def _export_in_own_process(source: Path, folder: Path, attention: bool) -> None:
    """`export_onnx` of the model in ``source`` by ``python -m core.export``.

    torch.export traces under a fake-tensor mode that is not safe beside inference running in
    another thread: in a server that exports a model in the background while it detects, the two
    aborted the whole process (bench/review_session.py, 2026-12-03). A process of its own cannot.
    """
    command = [sys.executable, "-m", "core.export", str(source), "--out", str(folder)]
    result = subprocess.run(command + (["--attention"] if attention else []), capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=3600)
    if result.returncode != 0:
        said = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.startswith("error: ")]
        raise ExportError(said[-1] if said else f"the export process ended with status {result.returncode}: "
                          f"{result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else 'no output'}")


@dataclass
class ExportOptions:
    out: Path | None = field(default=None, metadata={"required": True, "help": "folder for model.onnx and export.json"})
    attention: bool = field(default=False, metadata={"help": "also output every decoder layer's cross-attention"})
    check: Sequence[str] = field(default=tuple(f"{h}x{w}" for h, w in CHECK_SIZES),
                                 metadata={"help": "HEIGHTxWIDTH sizes to compare with PyTorch at"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="hub id, save_pretrained directory, or 'bundled'")
    add_flags(parser, ExportOptions)
    namespace = parser.parse_args(argv)
    options = from_flags(ExportOptions, namespace)
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in options.check]
        if not sizes or any(len(s) != 2 or min(s) < 32 for s in sizes):
            raise ValueError
    except ValueError:
        print("error: --check takes sizes like 480x640 (height x width, each at least 32)", file=sys.stderr)
        return 2
    try:
        detector = load_detector(namespace.model, device="cpu")
        info = export_onnx(detector, options.out, options.attention, sizes)
    except (ModelLoadError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    worst = max(info.max_diff.values())
    print(f"wrote {options.out / MODEL_FILE}: {info.num_queries} queries, {len(info.labels)} labels; "
          f"max |ONNX - PyTorch| {worst:.1e} over {', '.join(info.max_diff)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

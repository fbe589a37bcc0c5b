"""Command-line detection: annotated pictures and a JSON file of every query, per image.

    python -m core.predict IMAGE... [--model NAME|PATH] [--threshold 0.7] [--size 800] [--out DIR]

For each image it writes ``DIR/<stem>_annotated.jpg`` and ``DIR/<stem>.json``:

    {"model": str, "labels": [str], "image_size": [w, h], "threshold": float, "size": int | null,
     "detections": [{"label", "score", "box": [x1, y1, x2, y2], "query_index"}],
     "queries": [{"index", "label", "score", "no_object", "box": [x1, y1, x2, y2]}]}

Boxes are in pixels of the original image; every query is listed. Bad input exits with status 2
and one line on stderr saying what is wrong.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from transformers.utils import logging as transformers_logging

from core.allocator import keep_freed_memory
from core.annotate import annotate
from core.engines import DEFAULT_ENGINE, ENGINES, attach_engine, default_cache_dir
from core.flags import add_flags, from_flags
from core.images import ImageError, load_image
from core.inference import QueryOutputs, predict
from core.loading import ModelLoadError, load_detector_or_bundled

DEFAULT_MODEL = "facebook/detr-resnet-50"


def result_json(outputs: QueryOutputs, model: str, threshold: float, size: int | None) -> dict:
    """The JSON document for one image (see the module docstring)."""
    detections = outputs.to_detections(threshold)

    def box(values) -> list[float]:
        return [round(float(v), 2) for v in values]

    return {
        "model": model,
        "labels": list(outputs.labels),
        "image_size": list(outputs.image_size),
        "threshold": threshold,
        "size": size,
        "detections": [
            {"label": str(name), "score": round(float(score), 4), "box": box(xyxy), "query_index": int(query)}
            for xyxy, score, name, query in zip(
                detections.xyxy, detections.confidence, detections.data["class_name"], detections.data["query_index"]
            )
        ],
        "queries": [
            {
                "index": i,
                "label": outputs.labels[outputs.label_ids[i]],
                "score": round(float(outputs.scores[i]), 4),
                "no_object": round(float(outputs.no_object[i]), 4),
                "box": box(outputs.boxes[i]),
            }
            for i in range(outputs.num_queries)
        ],
    }


def to_json(document: dict) -> str:
    """JSON with one line per detection and per query: diffable and readable without jq."""
    lines = []
    for key, value in document.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join(f"  {json.dumps(item)}" for item in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: no half-written outputs."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class PredictOptions:
    """How `main` runs: the model, the threshold and size, where the results go."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "hub id, save_pretrained directory, or 'bundled' "
                       "(the bundled model stands in when the hub cannot be reached)"})
    threshold: float = field(default=0.7, metadata={"help": "minimum score of a detection"})
    size: int | None = field(default=None, metadata={"help": "shortest edge the image is resized to (none: the "
                             "model's, 800 for DETR-R50)"})
    out: Path = field(default=Path("predictions"), metadata={"help": "output directory"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (none: cuda when available)"})
    batch_size: int = field(default=4, metadata={"help": "images per forward pass"})
    cpu_bf16: bool = field(default=False, metadata={"help": "on CPU, run PyTorch under bf16 autocast (faster with "
                           "AVX512-BF16/AMX; scores move ~1e-2); implies --engine torch"})
    engine: str = field(default=DEFAULT_ENGINE, metadata={"choices": ENGINES, "help": "what runs the model on "
                        "CPU (docs/benchmarks.md); one that cannot run falls back to torch with a note"})
    engine_cache: Path = field(default_factory=default_cache_dir, metadata={"help": "where exported graphs are kept"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m core.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to run the detector on")
    add_flags(parser, PredictOptions)
    namespace = parser.parse_args(argv)
    options = from_flags(PredictOptions, namespace)
    return argparse.Namespace(images=namespace.images, **vars(options))


def _validate(args: argparse.Namespace) -> None:
    if not 0.0 <= args.threshold <= 1.0:
        raise ValueError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    if args.size is not None and not 32 <= args.size <= 4096:
        raise ValueError(f"--size must be between 32 and 4096 pixels, got {args.size}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}.")
    stems: dict[str, Path] = {}
    for path in args.images:
        if path.stem in stems:
            raise ValueError(
                f"{stems[path.stem]} and {path} would both write {path.stem}.json; rename one or run them separately."
            )
        stems[path.stem] = path
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; pass a directory.")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    transformers_logging.disable_progress_bar()
    args = parse_args(argv)
    keep_freed_memory()
    try:
        _validate(args)
        images = [load_image(path) for path in args.images]  # fail on a bad image before loading a model
        detector = load_detector_or_bundled(args.model, args.device)
        detector.cpu_bf16 = args.cpu_bf16
    except (ValueError, ImageError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if detector.note:
        print(f"note: {detector.note}", file=sys.stderr)
    if engine_note := attach_engine(detector, "torch" if args.cpu_bf16 else args.engine, args.engine_cache):
        print(f"note: {engine_note}", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    outputs = predict(detector, images, shortest_edge=args.size, batch_size=args.batch_size)
    for path, image, result in zip(args.images, images, outputs):
        document = result_json(result, detector.name, args.threshold, args.size)
        picture = Image.fromarray(annotate(image, result.to_detections(args.threshold)))
        _write_atomic(args.out / f"{path.stem}_annotated.jpg", lambda p: picture.save(p, format="JPEG", quality=92))
        _write_atomic(args.out / f"{path.stem}.json", lambda p: p.write_text(to_json(document)))
        print(f"{path}: {len(document['detections'])} detections ({detector.engine_name}) -> "
              f"{args.out / (path.stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

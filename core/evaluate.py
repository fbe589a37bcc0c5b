"""COCO evaluation through pycocotools: AP, AP50, AP75, AP small/medium/large and per-class AP.

    python -m core.evaluate --model NAME|PATH --data DIR_OR_JSON [--size 800] [--duplicate-iou 0.7] \
        [--test-time-flip true|false] [--json OUT]

``--data`` is a COCO directory (``annotations.json`` next to the image paths it names) or the
annotations file itself. Categories are matched to the model's labels by name, so a model and a
dataset need not share id numbering; COCO category ids written by this project start at 1.
Detections are what each family's reference evaluation scores (no threshold): for DETR (softmax
with "no object") every query with its best real class, as DETR's own evaluation does; for
Conditional DETR (independent sigmoids) the image's 100 best (query, class) pairs, so a query whose
second class is right still counts, as its own evaluation and transformers'
``post_process_object_detection`` do. A model whose config.json sets ``duplicate_iou`` (a fine-tuned
version that chose it on validation) has duplicates of one class removed first, as it has wherever
it runs (`core.inference.QueryOutputs.to_detections`); one whose config.json sets ``test_time_flip``
runs each image mirrored too and fuses the two passes (`core.inference.flip_fused`). The flags
override both.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from collections.abc import Sequence

import numpy as np
import supervision as sv
from transformers.utils import logging as transformers_logging

from core.allocator import keep_freed_memory
from core.boxes import box_xyxy_to_xywh
from core.flags import add_flags, from_flags
from core.images import ImageError
from core.inference import QueryOutputs, duplicate_iou_problem, predict, without_duplicates
from core.loading import Detector, ModelLoadError, load_detector_or_bundled

SUMMARY = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]


@dataclass
class Metrics:
    AP: float
    AP50: float
    AP75: float
    AP_small: float
    AP_medium: float
    AP_large: float
    per_class: dict[str, float] = field(default_factory=dict)  # -1 where a class has no ground truth
    images: int = 0
    ground_truth_boxes: int = 0

    def table(self) -> str:
        lines = [f"{'metric':<12} {'value':>7}"] + [f"{name:<12} {getattr(self, name):7.3f}" for name in SUMMARY]
        lines += [f"{'AP ' + name:<12} {value:7.3f}" for name, value in self.per_class.items()]
        return "\n".join(lines)


def coco_metrics(ground_truth: dict, detections: list[dict]) -> Metrics:
    """Score ``detections`` (COCO result dicts: image_id, category_id, bbox xywh, score) against a
    COCO ground-truth document. Pure pycocotools; no model involved."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    document = copy.deepcopy(ground_truth)
    for annotation in document.get("annotations", []):
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(annotation["bbox"][2] * annotation["bbox"][3]))
    names = {c["id"]: c["name"] for c in document["categories"]}
    empty = Metrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, {name: 0.0 for name in names.values()},
                    len(document["images"]), len(document.get("annotations", [])))
    if not detections or not document.get("annotations"):
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        gt = COCO()
        gt.dataset = document
        gt.createIndex()
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(float(v), 0.0) for v in evaluator.stats[:6]]
    precision = evaluator.eval["precision"]  # [iou thresholds, recall, categories, areas, max dets]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[names[category_id]] = float(values.mean()) if values.size else -1.0
    return Metrics(*stats, per_class=per_class, images=len(document["images"]),
                   ground_truth_boxes=len(document["annotations"]))


MAX_DETECTIONS = 100  # per image: COCO's maxDets, and the pairs a sigmoid model's evaluation keeps


def to_coco_results(image_id: int, outputs: QueryOutputs, category_by_label: dict[str, int]) -> list[dict]:
    """One image's COCO results, as its family's reference evaluation makes them (module docstring):
    a softmax model's queries with their top class, a sigmoid model's best ``MAX_DETECTIONS``
    (query, class) pairs. Classes the dataset lacks are dropped first; with the detector's duplicate
    removal (``outputs.duplicate_iou``) so are duplicates of one class, as `QueryOutputs.to_detections`
    drops them (for a sigmoid model among its best ``3 * MAX_DETECTIONS`` pairs, before the best
    ``MAX_DETECTIONS`` are kept)."""
    boxes = box_xyxy_to_xywh(outputs.boxes)
    known = [c for c, label in enumerate(outputs.labels) if label in category_by_label]
    if not known:
        return []
    sigmoid = outputs.probs.shape[1] == len(outputs.labels)  # no no-object column
    if sigmoid:
        scores = outputs.probs[:, known]
        pool = MAX_DETECTIONS * (3 if outputs.duplicate_iou is not None else 1)
        queries, columns = np.unravel_index(np.argsort(-scores, axis=None, kind="stable")[:pool], scores.shape)
        classes = np.asarray(known)[columns]
    else:
        queries = np.flatnonzero(np.isin(outputs.label_ids, known))
        classes = outputs.label_ids[queries].astype(int)
    pair_scores = outputs.probs[queries, classes]
    if outputs.duplicate_iou is not None:
        keep = without_duplicates(outputs.boxes[queries], pair_scores, classes, outputs.duplicate_iou)
        queries, classes, pair_scores = queries[keep], classes[keep], pair_scores[keep]
    pairs = list(zip(queries.tolist(), classes.tolist(), pair_scores.tolist()))
    if sigmoid:
        pairs = pairs[:MAX_DETECTIONS]
    return [{"image_id": image_id, "category_id": category_by_label[outputs.labels[c]],
             "bbox": [round(float(v), 2) for v in boxes[q]], "score": score} for q, c, score in pairs]


def load_coco(path: str | Path) -> tuple[dict, Path]:
    """The annotations document and the directory its image paths are relative to."""
    path = Path(path)
    file = path / "annotations.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{path} is neither a COCO annotations file nor a directory with annotations.json.")
    try:
        document = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON ({error}).") from None
    missing = [key for key in ("images", "categories") if key not in document]
    if missing:
        raise ValueError(f"{file} is not COCO detection JSON: it has no {', '.join(missing)}.")
    return document, file.parent


def evaluate_model(detector: Detector, data: str | Path, shortest_edge: int | None = None,
                   batch_size: int = 8) -> Metrics:
    """Run ``detector`` on every image of a COCO dataset and score it."""
    document, root = load_coco(data)
    category_by_label = {c["name"]: c["id"] for c in document["categories"]}
    if not set(category_by_label) & set(detector.labels):
        raise ValueError(
            f"the model's labels ({', '.join(detector.labels[:8])}...) share no name with the dataset's "
            f"categories ({', '.join(category_by_label)}); is this the right model?"
        )
    results: list[dict] = []
    images = document["images"]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        outputs = predict(detector, [root / image["file_name"] for image in chunk], shortest_edge=shortest_edge,
                          batch_size=batch_size)
        for image, out in zip(chunk, outputs):
            results.extend(to_coco_results(image["id"], out, category_by_label))
    return coco_metrics(document, results)


def evaluate_images(detector: Detector, images: Sequence, truths: Sequence[sv.Detections], labels: list[str],
                    shortest_edge: int | None = None, batch_size: int = 8, longest_edge: int | None = None) -> Metrics:
    """COCO AP of ``detector`` on ``images`` (paths or arrays) against ``truths`` (pixel boxes with
    ``data["class_name"]``), with ``labels`` as the categories in this order (ids from 1); images
    resized as `core.preprocess.preprocess` does with ``shortest_edge`` / ``longest_edge``."""
    if len(images) != len(truths):
        raise ValueError(f"got {len(images)} images and {len(truths)} sets of boxes; give one per image.")
    outputs = predict(detector, list(images), shortest_edge=shortest_edge, longest_edge=longest_edge,
                      batch_size=batch_size)
    return score_outputs(outputs, truths, labels)


def score_outputs(outputs: Sequence[QueryOutputs], truths: Sequence[sv.Detections], labels: list[str]) -> Metrics:
    """COCO AP of predictions already made (one `QueryOutputs` per image) against ``truths``, as
    `evaluate_images` scores them: one forward pass can be scored several ways (e.g. with and without
    duplicate removal, `dataclasses.replace` on each output's ``duplicate_iou``)."""
    if len(outputs) != len(truths):
        raise ValueError(f"got {len(outputs)} predictions and {len(truths)} sets of boxes; give one per image.")
    category = {name: i + 1 for i, name in enumerate(labels)}
    document = {"images": [], "annotations": [],
                "categories": [{"id": i, "name": name} for name, i in category.items()]}
    results: list[dict] = []
    for image_id, (out, truth) in enumerate(zip(outputs, truths), 1):
        width, height = out.image_size
        document["images"].append({"id": image_id, "file_name": str(image_id), "width": width, "height": height})
        for box, name in zip(box_xyxy_to_xywh(np.asarray(truth.xyxy, dtype=np.float64)), truth.data["class_name"]):
            document["annotations"].append({"id": len(document["annotations"]) + 1, "image_id": image_id,
                                            "category_id": category[str(name)], "bbox": [float(v) for v in box],
                                            "iscrowd": 0, "area": float(box[2] * box[3])})
        results.extend(to_coco_results(image_id, out, category))
    return coco_metrics(document, results)


@dataclass
class EvaluateOptions:
    model: str | None = field(default=None, metadata={"required": True,
                              "help": "hub id, save_pretrained directory, or 'bundled'"})
    data: str | None = field(default=None, metadata={"required": True,
                             "help": "COCO directory (with annotations.json) or annotations file"})
    size: int | None = field(default=None, metadata={"help": "shortest edge (none: the model's)"})
    duplicate_iou: float | None = field(default=None, metadata={
        "help": "class-wise duplicate removal at this IoU instead of the model's (config.json's); 0: none"})
    test_time_flip: bool | None = field(default=None, metadata={
        "help": "true: also run each image mirrored and fuse the passes; false: one pass; none: as config.json says"})
    batch_size: int = 8
    device: str | None = None
    json: Path | None = field(default=None, metadata={"help": "also write the metrics to this file"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.evaluate", description=__doc__.split("\n\n")[0])
    add_flags(parser, EvaluateOptions)
    args = from_flags(EvaluateOptions, parser.parse_args(argv))
    keep_freed_memory()
    transformers_logging.disable_progress_bar()
    try:
        detector = load_detector_or_bundled(args.model, args.device)
        if detector.note:
            print(f"note: {detector.note}", file=sys.stderr)
        if args.duplicate_iou is not None:
            if problem := duplicate_iou_problem(args.duplicate_iou):
                raise ValueError(problem)
            detector.duplicate_iou = args.duplicate_iou or None
        if args.test_time_flip is not None:
            detector.test_time_flip = args.test_time_flip
        metrics = evaluate_model(detector, args.data, args.size, args.batch_size)
    except (ValueError, ModelLoadError, ImageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{detector.name} on {args.data}: {metrics.images} images, {metrics.ground_truth_boxes} boxes")
    print(metrics.table())
    if args.json:
        args.json.write_text(json.dumps(asdict(metrics), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

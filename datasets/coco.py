"""COCO detection import (validated before anything is written) and export of reviewed samples.

Import reads a COCO annotations file and checks all of it first: image paths must stay inside the
image folder, every annotation must name a known image and category and have a positive box.
One bad entry refuses the whole file with a message naming it, so nothing is half-imported.
Export goes through FiftyOne's COCO exporter, whose category ids start at 1 in label order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import supervision as sv

from core.boxes import box_xywh_to_xyxy

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class CocoError(ValueError):
    """A COCO file or image folder we refuse, with what is wrong and where."""


@dataclass
class CocoImage:
    path: Path
    ground_truth: sv.Detections  # pixels, data["class_name"]


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing absolute paths and anything that leaves ``root``."""
    root = root.resolve()
    if not relative or Path(relative).is_absolute():
        raise CocoError(f"image path {relative!r} must be relative to the image folder {root}.")
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise CocoError(f"image path {relative!r} leaves the image folder {root}; refusing to read it.")
    return path


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted), never following a link out of it."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CocoError(f"{folder} is not a folder; give the folder that holds the images.")
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(inside(root, str(path.relative_to(root))))
    if not found:
        raise CocoError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {folder}.")
    return found


def read_coco(annotations: str | Path, images_dir: str | Path | None = None) -> tuple[list[str], list[CocoImage]]:
    """Validated COCO detection data: (category names in id order, images with their boxes).

    ``images_dir`` defaults to the annotation file's folder.
    """
    annotations = Path(annotations)
    if annotations.is_dir():
        annotations = annotations / "annotations.json"
    if not annotations.is_file():
        raise CocoError(f"{annotations} does not exist; give a COCO annotations JSON file or its folder.")
    try:
        document = json.loads(annotations.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoError(f"{annotations} is not valid JSON ({error}).") from None
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in ("images", "categories")):
        raise CocoError(f"{annotations} is not COCO detection JSON: it needs 'images' and 'categories' lists.")
    root = Path(images_dir) if images_dir is not None else annotations.parent

    categories: dict[int, str] = {}
    for category in document["categories"]:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not category.get("name"):
            raise CocoError(f"category {category!r} needs an integer 'id' and a 'name'.")
        categories[category["id"]] = str(category["name"])

    images: dict[int, dict] = {}
    for image in document["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or not image.get("file_name"):
            raise CocoError(f"image entry {str(image)[:80]} needs an integer 'id' and a 'file_name'.")
        path = inside(root, str(image["file_name"]))
        if not path.is_file():
            raise CocoError(f"image {image['file_name']!r} (id {image['id']}) is not in {root}.")
        images[image["id"]] = {"path": path, "boxes": [], "names": [], "size": (image.get("width"), image.get("height"))}

    unknown_categories = set()
    for annotation in document.get("annotations", []):
        where = f"annotation {annotation.get('id', '?')}"
        if annotation.get("image_id") not in images:
            raise CocoError(f"{where} refers to image id {annotation.get('image_id')!r}, which the file does not list.")
        if annotation.get("category_id") not in categories:
            unknown_categories.add(annotation.get("category_id"))
            continue
        bbox = annotation.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox)
                or not all(math.isfinite(v) for v in bbox)):
            raise CocoError(f"{where} has bbox {bbox!r}; COCO boxes are [x, y, width, height] numbers.")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise CocoError(f"{where} has a zero or negative size box {bbox}; fix or delete it.")
        entry = images[annotation["image_id"]]
        entry["boxes"].append(bbox)
        entry["names"].append(categories[annotation["category_id"]])
    if unknown_categories:
        raise CocoError(f"annotations use category ids {sorted(unknown_categories, key=str)} that are not in "
                        f"'categories' (known: {sorted(categories)}); add them or fix the ids.")

    labels = [categories[key] for key in sorted(categories)]
    result = []
    for entry in images.values():
        xyxy = box_xywh_to_xyxy(np.array(entry["boxes"], dtype=np.float64).reshape(-1, 4))
        detections = sv.Detections(
            xyxy=xyxy.astype(np.float32), class_id=np.array([labels.index(n) for n in entry["names"]], dtype=int),
            data={"class_name": np.array(entry["names"], dtype=object)},
        )
        result.append(CocoImage(entry["path"], detections))
    return labels, result


def export_reviewed(view, out_dir: str | Path, labels: list[str]) -> Path:
    """Write the ``ground_truth`` of ``view`` as a COCO directory (``data/`` + ``labels.json``).

    Category ids run from 1 in the order of ``labels``; the images are copied.
    """
    import fiftyone as fo

    out_dir = Path(out_dir)
    if len(view) == 0:
        raise CocoError("there are no reviewed samples to export yet; save a review first.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CocoError(f"{out_dir} is not empty; choose a new folder so nothing is overwritten.")
    view.export(export_dir=str(out_dir), dataset_type=fo.types.COCODetectionDataset, label_field="ground_truth",
                classes=list(labels), export_media=True)
    return out_dir / "labels.json"

"""COCO detection import (validated before anything is written) and export of reviewed samples.

Import reads a COCO annotations file and checks all of it first: image paths must stay inside the
image folder, every annotation must name a known image and category and have a positive box.
One bad entry refuses the whole file with a message naming it, so nothing is half-imported.
Export goes through FiftyOne's COCO exporter, whose category ids start at 1 in label order.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
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


MAX_COCO_BYTES = 200_000_000  # a COCO file of a few hundred thousand boxes; anything larger is refused
MAX_COORDINATE = 1e6  # pixels; a box coordinate beyond this is not a pixel position


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refusing absolute paths and anything that leaves ``root``."""
    root = root.resolve()
    if not isinstance(relative, str) or not relative or "\x00" in relative or len(relative) > 1024:
        raise CocoError(f"image path {str(relative)[:80]!r} is not a usable file name (empty, not text, over "
                        "1024 characters or holding a NUL byte).")
    if Path(relative).is_absolute():
        raise CocoError(f"image path {relative!r} must be relative to the image folder {root}.")
    try:
        path = (root / relative).resolve()
    except (OSError, RuntimeError) as error:  # a link loop, a name the file system cannot hold
        raise CocoError(f"image path {relative[:80]!r} cannot be resolved ({error}).") from None
    if not path.is_relative_to(root):
        raise CocoError(f"image path {relative!r} leaves the image folder {root}; refusing to read it.")
    return path


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_document(annotations: Path) -> dict:
    try:
        if annotations.stat().st_size > MAX_COCO_BYTES:
            raise CocoError(f"{annotations} is over {MAX_COCO_BYTES // 1_000_000} MB; split it into smaller files.")
        document = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoError(f"{annotations} is not valid JSON ({str(error)[:120]}).") from None
    except RecursionError:
        raise CocoError(f"{annotations} is nested too deeply to be COCO JSON.") from None
    except OSError as error:
        raise CocoError(f"{annotations} could not be read ({error.strerror or error}).") from None
    if not isinstance(document, dict) or not all(isinstance(document.get(k), list) for k in ("images", "categories")):
        raise CocoError(f"{annotations} is not COCO detection JSON: it needs 'images' and 'categories' lists.")
    if not isinstance(document.get("annotations", []), list):
        raise CocoError(f"{annotations}: 'annotations' must be a list.")
    return document


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
    if "\x00" in str(annotations) or (images_dir is not None and "\x00" in str(images_dir)):
        raise CocoError("a path holds a NUL byte; give the path of the COCO JSON file (and of its image folder).")
    annotations = Path(annotations)
    if annotations.is_dir():
        annotations = annotations / "annotations.json"
    if not annotations.is_file():
        raise CocoError(f"{annotations} does not exist; give a COCO annotations JSON file or its folder.")
    document = _load_document(annotations)
    root = Path(images_dir) if images_dir is not None else annotations.parent
    if not root.is_dir():
        raise CocoError(f"the image folder {root} does not exist.")

    categories: dict[int, str] = {}
    for category in document["categories"]:
        if not isinstance(category, dict) or not _is_int(category.get("id")) or category.get("name") in (None, ""):
            raise CocoError(f"category {str(category)[:80]} needs an integer 'id' and a 'name'.")
        name = " ".join(str(category["name"]).split())
        if not name:
            raise CocoError(f"category {category['id']} has a blank name.")
        if category["id"] in categories:
            raise CocoError(f"category id {category['id']} appears twice ({categories[category['id']]!r} and "
                            f"{name!r}); give each category its own id.")
        if name in categories.values():
            raise CocoError(f"category name {name!r} appears twice; each class needs one id.")
        categories[category["id"]] = name

    images: dict[int, dict] = {}
    for image in document["images"]:
        if not isinstance(image, dict) or not _is_int(image.get("id")) or not image.get("file_name"):
            raise CocoError(f"image entry {str(image)[:80]} needs an integer 'id' and a 'file_name'.")
        if image["id"] in images:
            raise CocoError(f"image id {image['id']} appears twice ({images[image['id']]['path'].name!r} and "
                            f"{str(image['file_name'])[:80]!r}); give each image its own id.")
        path = inside(root, image["file_name"])
        if not path.is_file():
            raise CocoError(f"image {image['file_name']!r} (id {image['id']}) is not in {root}.")
        images[image["id"]] = {"path": path, "boxes": [], "names": [], "size": (image.get("width"), image.get("height"))}

    unknown_categories = set()
    for index, annotation in enumerate(document.get("annotations", [])):
        if not isinstance(annotation, dict):
            raise CocoError(f"annotation number {index + 1} is {str(annotation)[:40]!r}, not an object.")
        where = f"annotation {str(annotation.get('id', f'number {index + 1}'))[:40]}"
        if annotation.get("image_id") not in images:
            raise CocoError(f"{where} refers to image id {annotation.get('image_id')!r}, which the file does not list.")
        if annotation.get("category_id") not in categories:
            unknown_categories.add(annotation.get("category_id"))
            continue
        bbox = annotation.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
                or not all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in bbox)):
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

    Category ids run from 1 in the order of ``labels``; the images are copied. The export is
    written into a hidden folder beside ``out_dir`` and renamed into place when complete, so a full
    disk or a crash leaves no half-written export (a `CocoError` says what happened).
    """
    import fiftyone as fo

    out_dir = Path(out_dir)
    if len(view) == 0:
        raise CocoError("there are no reviewed samples to export yet; save a review first.")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CocoError(f"{out_dir} is not empty (or not a folder); choose a new folder so nothing is overwritten.")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as error:
        raise CocoError(f"cannot write into {out_dir.parent} ({error.strerror or error}).") from None
    try:
        view.export(export_dir=str(staging), dataset_type=fo.types.COCODetectionDataset, label_field="ground_truth",
                    classes=list(labels), export_media=True)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    except OSError as error:
        raise CocoError(f"the export to {out_dir} failed ({error.strerror or error}); nothing was left there. "
                        "Free some disk space and export again.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / "labels.json"

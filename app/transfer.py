"""Datasets in and out through the browser, on every deployment (a Space included).

In: images, a zip of images, or a zip of a COCO dataset (its annotations JSON and images),
uploaded to the review dataset (`import_upload`). Archives are checked whole before anything is
extracted (`datasets.archives`), a COCO dataset is checked whole before anything is written
(`app.review.import_coco_files`). Out: the reviewed samples as a COCO zip to download
(`export_download`), optionally only those reviewed since a date or by one reviewer.
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from app.inputs import processing_size, threshold_value
from app.review import import_coco_files, import_images
from datasets.archives import ArchiveError, extract_zip, make_zip
from datasets.coco import IMAGE_SUFFIXES, CocoError, export_reviewed, list_images

if TYPE_CHECKING:
    from app.state import AppState

MAX_UPLOAD_FILES = 500


def _upload_paths(files) -> list[Path]:
    paths = [Path(getattr(item, "name", item)) for item in files or [] if item]
    if not paths:
        raise gr.Error("Choose images, a zip of images or a zip of a COCO dataset to upload first.")
    if len(paths) > MAX_UPLOAD_FILES:
        raise gr.Error(f"{len(paths)} files at once is over the limit of {MAX_UPLOAD_FILES}; zip them instead.")
    return paths


def _coco_json(folder: Path) -> Path | None:
    """The COCO annotations file of an extracted archive, if it holds one (any JSON with images and categories)."""
    for path in sorted(folder.rglob("*.json"), key=lambda p: (len(p.parts), p.name != "annotations.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8")) if path.stat().st_size < 200_000_000 else None
        except (ValueError, UnicodeDecodeError, RecursionError, OSError):
            continue
        if isinstance(document, dict) and "images" in document and "categories" in document:
            return path
    return None


def import_upload(state: AppState, files, model_name: str, threshold: float, size: int | None = None) -> str:
    """Add uploaded images, zips of images and zipped COCO datasets to the review dataset."""
    threshold, size = threshold_value(threshold), processing_size(size)
    paths = _upload_paths(files)
    workspace = state.data_dir / "uploads" / uuid.uuid4().hex
    try:
        # Every archive is extracted and checked before anything is imported.
        images, coco_files = [], []
        for index, path in enumerate(paths):
            if path.suffix.lower() == ".zip":
                try:
                    folder = extract_zip(path, workspace / str(index))
                except ArchiveError as error:
                    raise gr.Error(f"{error} Nothing was imported.") from None
                if (annotations := _coco_json(folder)) is not None:
                    coco_files.append(annotations)
                    continue
                try:
                    images.extend(list_images(folder))
                except CocoError:
                    raise gr.Error(f"{html.escape(path.name)} holds no images and no COCO annotations JSON; "
                                   "nothing was imported.") from None
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                raise gr.Error(f"{html.escape(path.name)} is neither an image nor a zip; upload images, a zip of "
                               "images or a zip of a COCO dataset. Nothing was imported.")
        reports = [import_coco_files(state, annotations, None, model_name, threshold, size)
                   for annotations in coco_files]
        if images:
            reports.append(import_images(state, images, model_name, threshold, size, where="the upload"))
        return "\n\n".join(reports)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)  # the store keeps its own copies of the images


def _since(text: str | None) -> datetime | None:
    if not text or not str(text).strip():
        return None
    try:
        return datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise gr.Error(f"'Reviewed since' takes a date like 2026-12-01 (or 2026-12-01 14:30), got "
                       f"{str(text)[:40]!r}.") from None


def export_download(state: AppState, since: str | None = None, reviewer: str | None = None) -> str:
    """The reviewed samples (optionally since a UTC date, by one reviewer) as a COCO zip to download."""
    from fiftyone import ViewField

    view = state.store.reviewed_view()
    if (start := _since(since)) is not None:
        view = view.match(ViewField("review.time") >= start)
    if reviewer and str(reviewer).strip():
        view = view.match(ViewField("review.reviewer") == " ".join(str(reviewer).split()))
    if len(view) == 0:
        raise gr.Error("No reviewed samples match; save a review first, or widen the filter.")
    folder = Path(tempfile.mkdtemp(prefix="detr-studio-export-"))  # Gradio serves files from the temp dir
    try:
        export_reviewed(view, folder / "coco", state.store.labels)
    except CocoError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise gr.Error(str(error)) from None
    archive = make_zip(folder / "coco", folder / f"{state.store.dataset.name}-coco.zip")
    shutil.rmtree(folder / "coco", ignore_errors=True)
    return str(archive)

"""The Review tab's handlers: the FiftyOne review store, the box editor, the queue, import/export,
evaluation and the FiftyOne App. Plain functions, called by Gradio and by the tests.

The editor is `gradio_image_annotation`; its value is ``{"image": ..., "boxes": [{"xmin", "ymin",
"xmax", "ymax", "label", "color"}]}`` in image pixels. Every save names the revision it was
made against, so a reviewer never silently overwrites another's work.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np
import supervision as sv

from app.fiftyone_app import app_url
from app.inputs import detector_for, image_and_detector, processing_size, threshold_value
from app.queries import query_index
from app.render import class_color, pr_curves
from core.images import ImageError, load_image
from core.inference import QueryOutputs
from datasets.coco import CocoError, export_reviewed, list_images, read_coco
from datasets.labels import ReviewError, check_boxes, clean_label

if TYPE_CHECKING:
    from app.state import AppState

STORED_SCORE_FLOOR = 0.05  # predictions stored with a sample: all at or above this (or the threshold, if lower)


# ---- editor value <-> detections ---------------------------------------------------------------

def _editor_boxes(detections: sv.Detections, labels: list[str]) -> list[dict]:
    boxes = []
    for (x0, y0, x1, y1), name in zip(detections.xyxy, detections.data.get("class_name", [])):
        index = labels.index(name) if name in labels else len(labels)
        boxes.append({"xmin": int(round(x0)), "ymin": int(round(y0)), "xmax": int(round(x1)), "ymax": int(round(y1)),
                      "label": str(name), "color": class_color(index)})
    return boxes


def editor_detections(value: dict | None) -> sv.Detections:
    """The editor's boxes as `sv.Detections` (labels checked later by the store)."""
    if not value or value.get("image") is None:
        raise gr.Error("Load a sample into the editor first (Next to review, or Send to review).")
    boxes = value.get("boxes") or []
    try:
        xyxy = np.array([[float(b["xmin"]), float(b["ymin"]), float(b["xmax"]), float(b["ymax"])] for b in boxes],
                        dtype=np.float32).reshape(-1, 4)
    except (KeyError, TypeError, ValueError):
        raise gr.Error("A box is missing a coordinate; redraw it.") from None
    if not np.isfinite(xyxy).all():
        raise gr.Error("A box has a coordinate that is not a number; redraw it.")
    names = np.array([b.get("label") if isinstance(b.get("label"), str) else "" for b in boxes], dtype=object)
    return sv.Detections(xyxy=xyxy, data={"class_name": names})


def _status(state: AppState, item) -> str:
    who = f" by {html.escape(item.reviewer)}" if item.reviewer else ""
    when = f" at {item.time:%Y-%m-%d %H:%M} UTC" if item.time else ""
    counts = state.store.counts()
    return (f"Sample `{item.sample_id}` · **{item.status}**{who}{when} · revision {item.revision} · "
            f"{counts['reviewed']} reviewed, {counts['to_review']} to review")


def load_sample(state: AppState, sample_id: str, threshold: float = 0.5):
    """A stored sample into the editor: its reviewed truth, else predictions at ``threshold``.

    Returns ``(editor value, sample id, revision, status)``.
    """
    try:
        item = state.store.get(sample_id)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    value = {"image": item.filepath, "boxes": _editor_boxes(shown_boxes(item, threshold), state.store.labels)}
    return value, item.sample_id, item.revision, _status(state, item)


def shown_boxes(item, threshold: float) -> sv.Detections:
    """What the editor opens a sample with: its truth if it has one, else the predictions at ``threshold``."""
    if item.ground_truth is not None:
        return item.ground_truth
    if not len(item.predictions):
        return item.predictions
    return item.predictions[item.predictions.confidence >= float(threshold)]


def send_to_review(state: AppState, image, model_name: str, threshold: float, size: int | None = None):
    """Add the Detect tab's image and its predictions to the review dataset and open it in the editor."""
    threshold, size = threshold_value(threshold), processing_size(size)
    picture, detector = image_and_detector(state.models, image, model_name)
    outputs = state.gpu.predict(detector, [picture], shortest_edge=size)[0]
    return load_sample(state, _add(state, picture, outputs, detector, threshold), threshold)


def _add(state: AppState, picture, outputs: QueryOutputs, detector, threshold: float, ground_truth=None) -> str:
    """Store ``picture`` with the model's predictions; returns the sample id."""
    # Everything above a low floor is stored, so a reviewer can lower the threshold without rerunning.
    detections = outputs.to_detections(min(STORED_SCORE_FLOOR, threshold))
    try:
        return state.store.add_image(picture, detections, model_version=detector.name, labels=detector.labels,
                                 ground_truth=ground_truth)
    except ReviewError as error:
        raise gr.Error(str(error)) from None


def save_review(state: AppState, sample_id: str, revision, value: dict, reviewer: str, threshold: float = 0.5):
    """Save the editor's boxes as the truth of ``sample_id`` if ``revision`` is still current.

    Returns the sample as stored, read back: ``(editor value, sample id, revision, status)``.
    A stale revision or a bad box raises `gr.Error`; the stored sample is untouched.
    """
    if not sample_id:
        raise gr.Error("Load a sample into the editor first (Next to review, or Send to review).")
    boxes = editor_detections(value)
    try:
        state.store.save_review(sample_id, boxes, int(revision), reviewer)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    value, sample_id, revision, status = load_sample(state, sample_id, threshold)
    return value, sample_id, revision, f"Saved. {status}"


def undo_review(state: AppState, sample_id: str, revision, reviewer: str, threshold: float = 0.5):
    """Restore the sample's previous revision (a new revision itself)."""
    if not sample_id:
        raise gr.Error("Load a sample into the editor first.")
    try:
        state.store.undo(sample_id, int(revision), reviewer)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    value, sample_id, revision, status = load_sample(state, sample_id, threshold)
    return value, sample_id, revision, f"Undone. {status}"


def next_to_review(state: AppState, current: str | None = None, threshold: float = 0.5, skipped=(),
                   view: str | None = None):
    """The next sample of the queue (the most uncertain unreviewed one, or the next of saved view
    ``view``), skipping the one on screen and those in ``skipped``."""
    try:
        sample_id = state.store.next_to_review([current, *skipped] if current else list(skipped), view)
    except ReviewError as error:
        raise gr.Error(str(error)) from None
    if sample_id is None:
        if current:
            return load_sample(state, current, threshold)
        raise gr.Error("Nothing left to review: send images from the Detect tab or import a folder.")
    return load_sample(state, sample_id, threshold)


def promote_query(state: AppState, key: str, query, sample_id: str | None, value: dict | None, threshold: float = 0.5):
    """Add one query's box and top class to the review of its image (opening it in the editor)."""
    item = state.queries.get(key)
    outputs = item.outputs
    query = query_index(outputs, query)
    threshold = threshold_value(threshold)
    image_id = state.store.find(item.image)
    if image_id is None:
        image_id = _add(state, item.image, outputs, detector_for(state.models, item.model_name), threshold)
    if image_id == sample_id and value and value.get("image") is not None:
        current, stored = value, state.store.get(image_id)
        revision, status = stored.revision, _status(state, stored)
    else:
        current, image_id, revision, status = load_sample(state, image_id, threshold)
    label = outputs.labels[int(outputs.label_ids[query])]
    box = sv.Detections(xyxy=outputs.boxes[query].reshape(1, 4).astype(np.float32),
                        data={"class_name": np.array([label], dtype=object)})
    current = {**current, "boxes": list(current.get("boxes") or []) + _editor_boxes(box, state.store.labels)}
    note = f"Added query {query} ({html.escape(label)}) to the editor; press Save to keep it."
    return current, image_id, revision, f"{note}\n\n{status}"


def label_keys(state: AppState) -> str:
    """The digit keys for the labels of the first nine classes, as HTML the page's key handler reads."""
    items = "".join(f'<kbd class="label-key" data-label="{html.escape(name, quote=True)}">{index}</kbd>&nbsp;'
                    f"{html.escape(name)} " for index, name in enumerate(state.store.labels[:9], 1))
    return f"<p>Select a box, then press a digit for its label: {items}</p>" if items else ""


def review_counts(state: AppState) -> str:
    counts = state.store.counts()
    return (f"Dataset `{state.store.dataset.name}`: {counts['reviewed']} reviewed, {counts['to_review']} to review, "
            f"{counts['total']} in all.")


# ---- import / export ----------------------------------------------------------------------------

def import_folder(state: AppState, folder: str, model_name: str, threshold: float, size: int | None = None) -> str:
    """Add every image under ``folder`` (a server folder under the import roots), pre-annotated by
    the model; unreadable files are listed."""
    threshold, size = threshold_value(threshold), processing_size(size)
    root = state.server_path(folder, "import")
    try:
        paths = list_images(root)
    except CocoError as error:
        raise gr.Error(str(error)) from None
    return import_images(state, paths, model_name, threshold, size, where=str(root))


def import_images(state: AppState, paths: list[Path], model_name: str, threshold: float, size: int | None,
                  where: str) -> str:
    """Add the images at ``paths`` with the model's predictions; unreadable files are listed and skipped."""
    detector = detector_for(state.models, model_name)
    added, problems = 0, []
    for path in paths:
        try:
            picture = load_image(path)
        except ImageError as error:
            problems.append(f"{Path(path).name}: {error}")
            continue
        _add(state, picture, state.gpu.predict(detector, [picture], shortest_edge=size)[0], detector, threshold)
        added += 1
    report = f"Imported {added} of {len(paths)} images from {html.escape(where)}."
    if problems:
        report += "\n\nSkipped:\n" + "\n".join(f"- {html.escape(p)}" for p in problems)
    return f"{report}\n\n{review_counts(state)}"


def import_coco(state: AppState, annotations: str, images_dir: str | None, model_name: str, threshold: float,
                size: int | None = None) -> str:
    """Import a COCO dataset from server paths under the import roots (see `import_coco_files`)."""
    threshold, size = threshold_value(threshold), processing_size(size)
    annotations_path = state.server_path(annotations, "import")
    images_path = state.server_path(images_dir, "import") if images_dir and str(images_dir).strip() else None
    return import_coco_files(state, annotations_path, images_path, model_name, threshold, size)


def import_coco_files(state: AppState, annotations: Path, images_dir: Path | None, model_name: str,
                      threshold: float, size: int | None) -> str:
    """A COCO dataset's boxes become ``ground_truth`` (status ``imported``), the model's output
    ``predictions``. The whole file, its labels and every image's boxes are checked before anything
    is written."""
    try:
        labels, images = read_coco(annotations, images_dir)
        pictures = [load_image(image.path) for image in images]
    except (CocoError, ImageError) as error:
        raise gr.Error(f"{error} Nothing was imported.") from None
    detector = detector_for(state.models, model_name)
    try:
        for label in labels:
            clean_label(label)
    except ReviewError as error:
        raise gr.Error(f"A category name is not usable: {error} Fix the COCO file; nothing was imported.") from None
    for image, picture in zip(images, pictures):  # the store's own box checks, on every image before any write
        try:
            check_boxes(image.ground_truth, *picture.size)
        except ReviewError as error:
            raise gr.Error(f"{image.path.name}: {error} Fix the COCO file; nothing was imported.") from None
    state.store.add_labels(labels)
    for image, picture in zip(images, pictures):
        _add(state, picture, state.gpu.predict(detector, [picture], shortest_edge=size)[0], detector, threshold,
             ground_truth=image.ground_truth)
    return f"Imported {len(images)} images with {len(labels)} categories.\n\n{review_counts(state)}"


def export_coco(state: AppState, out_dir: str) -> str:
    """Write the reviewed samples' truth as COCO (category ids from 1) into an empty folder."""
    target = state.server_path(out_dir, "export")
    view = state.store.reviewed_view()
    try:
        path = export_reviewed(view, target, state.store.labels)
    except CocoError as error:
        raise gr.Error(str(error)) from None
    return f"Exported {len(view)} reviewed samples to {html.escape(str(path))}."


# ---- evaluation and the FiftyOne App -----------------------------------------------------------

def evaluate_reviewed(state: AppState):
    """FiftyOne's COCO evaluation of ``predictions`` against ``ground_truth`` on reviewed samples.

    Returns ``(summary, per-class rows, PR-curve figure)``. The per-object ``eval`` fields (TP/FP/FN)
    stay in the dataset for filtering in the FiftyOne App.
    """
    view = state.store.reviewed_view()
    if len(view) == 0:
        raise gr.Error("No reviewed samples yet; save a review first.")
    results = view.evaluate_detections("predictions", gt_field="ground_truth", eval_key="eval", method="coco",
                                       compute_mAP=True)
    rows, curves = [], {}
    for index, name in enumerate(results.classes):
        ap = float(results.mAP([name]))
        rows.append([str(name), round(ap, 4) if ap >= 0 else "no data"])
        if ap >= 0:
            curves[str(name)] = results.precision[:, index, :].mean(0)
    mean_ap = float(results.mAP())
    state.store.save_views(eval_key="eval")
    summary = (f"mAP (COCO, IoU 0.50:0.95) over {len(view)} reviewed samples: **{mean_ap:.3f}**. "
               "Per-object results are in the fields `eval`, `eval_tp`, `eval_fp`, `eval_fn`; the saved view "
               "`disagreements` in FiftyOne lists the reviewed samples where model and review differ.")
    return summary, rows, pr_curves(np.asarray(results.recall), curves)


def fiftyone_frame(state: AppState) -> tuple[str, str]:
    """The Review-in-FiftyOne tab: links (full page, one per saved view) and the embedded App."""
    names = state.store.save_views(eval_key="eval")
    dataset = state.store.dataset.name
    full = app_url(dataset)
    links = " · ".join(f"[{name}]({full}&view={name})" for name in names)
    markdown = f"[Open `{dataset}` full page]({full}) — saved views: {links}"
    frame = (f'<iframe src="{html.escape(app_url(dataset, embedded=True))}" title="FiftyOne App" '
             'style="width:100%;height:820px;border:0"></iframe>')
    return markdown, frame


def open_fiftyone(state: AppState) -> str:
    """A link to the FiftyOne App on the review dataset, served by this app under ``/fiftyone``;
    refreshes the saved views per review state first."""
    state.store.save_views(eval_key="eval")
    url = app_url(state.store.dataset.name)
    return (f"[Open `{state.store.dataset.name}` in the FiftyOne App]({url}) (served by this app under `/fiftyone`; "
            "it opens in this tab, use your browser's back button to return).")

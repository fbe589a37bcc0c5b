"""The Queries tab's handlers: every object query of the current image, and its cross-attention.

The model runs once per (image, model, size); the outputs, with every decoder layer's
cross-attention, are kept in a small cache so selecting queries, layers and heads never reruns it.
A handler returns a cache key that the page (or a `gradio_client` script) passes back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np

from app.inputs import (detector_for, image_and_detector, prediction_note, processing_size, threshold_value,
                        with_note)
from app.render import attention_overlay, grid_query_at, query_grid, slot_plot
from core.boxes import box_xyxy_to_cxcywhn
from core.images import ImageError, load_image
from core.inference import QueryOutputs
from datasets.review import pixel_hash

if TYPE_CHECKING:
    from app.state import AppState

QUERY_HEADERS = ["query", "label", "score", "no-object", "x1", "y1", "x2", "y2", "passed"]
MEAN_HEADS = "mean"


@dataclass
class Inspected:
    image: np.ndarray
    outputs: QueryOutputs
    model_name: str
    model_version: str
    seconds: float


def run_queries(state: AppState, image, model_name: str, size: int | None, threshold: float):
    """Run the model once with all decoder layers' attention; returns
    ``(key, rows, grid picture, layer choices, head choices, status)``."""
    threshold, size = threshold_value(threshold), processing_size(size)
    picture, detector = image_and_detector(state.models, image, model_name,
                                           "Upload an image or pick an example in the Detect tab first.")
    picture = np.asarray(picture)
    key = pixel_hash(picture)[:16] + f"|{detector.name}|{size}"
    cached = state.queries.find(key)
    if cached is None:
        layers = list(range(detector.model.config.decoder_layers))
        start = time.perf_counter()
        outputs = state.gpu.predict(detector, [picture], shortest_edge=size, attention_layers=layers)[0]
        cached = Inspected(picture, outputs, model_name, detector.name, time.perf_counter() - start)
    state.queries.remember(key, cached)
    outputs = cached.outputs
    heads = next(iter(outputs.attention.values())).shape[0]
    passed = int(outputs.passed(threshold).sum())
    status = (f"{outputs.num_queries} queries, {passed} at or above {threshold:.2f} · model "
              f"`{detector.name}` (torch: the attention maps need PyTorch) · {cached.seconds:.2f} s (computed once; "
              f"selecting queries reuses it){prediction_note(detector)}")
    return (key, query_rows(outputs, threshold), query_grid(outputs, threshold),
            gr.update(choices=[str(layer) for layer in sorted(outputs.attention)], value=str(max(outputs.attention))),
            gr.update(choices=[MEAN_HEADS] + [str(h) for h in range(heads)], value=MEAN_HEADS),
            with_note(status, detector))


def query_rows(outputs: QueryOutputs, threshold: float) -> list[list]:
    """One row per query in index order; the browser's table sorts by any column. ``passed``: yes, no, or
    "duplicate of N" for a query that passes but repeats query N of its class (a model with duplicate
    removal, `core.inference.QueryOutputs.duplicates`: it is not among the detections)."""
    rows, duplicates = [], outputs.duplicates(threshold)
    for query in range(outputs.num_queries):
        x1, y1, x2, y2 = (round(float(v), 1) for v in outputs.boxes[query])
        passed = "yes" if outputs.scores[query] >= threshold else "no"
        if query in duplicates:
            passed = f"duplicate of {duplicates[query]}"
        rows.append([query, outputs.labels[outputs.label_ids[query]], round(float(outputs.scores[query]), 4),
                     round(float(outputs.no_object[query]), 4), x1, y1, x2, y2, passed])
    return rows


def query_attention(state: AppState, key: str, query, layer=None, head=None, threshold: float = 0.5):
    """One query's box and cross-attention on the image; returns ``(overlay, grid, details)``.

    ``layer`` is a decoder layer index (default the last), ``head`` a head index or "mean".
    """
    item = state.queries.get(key)
    outputs = item.outputs
    query = query_index(outputs, query)
    layer = int(layer) if layer not in (None, "") else max(outputs.attention)
    head = None if head in (None, "", MEAN_HEADS) else int(head)
    try:
        heatmap = outputs.attention_map(query, layer, head)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    label_id = int(outputs.label_ids[query])
    label = outputs.labels[label_id]
    caption = f"query {query}: {label} {outputs.scores[query]:.2f}"
    overlay = attention_overlay(item.image, heatmap, outputs.boxes[query], caption, label_id)
    top = np.argsort(-outputs.probs[query])[:3]
    names = outputs.labels + (["no object"] if outputs.probs.shape[1] > len(outputs.labels) else [])
    details = (f"**Query {query}** · layer {layer} · {'heads averaged' if head is None else f'head {head}'}\n\n"
               "top classes: " + ", ".join(f"{names[i]} {outputs.probs[query, i]:.3f}" for i in top)
               + f" · no-object {outputs.no_object[query]:.3f}" + _flip_note(outputs, query))
    return overlay, query_grid(outputs, float(threshold), selected=query), details


def _flip_note(outputs: QueryOutputs, query: int) -> str:
    """With the test-time flip, what became of ``query`` (`core.inference.flip_fused`)."""
    if outputs.flip_partner is None:
        return ""
    partner = int(outputs.flip_partner[query])
    if partner < 0:
        return "\n\nTest-time flip: no query of the mirrored image found this object, so its probabilities are halved."
    return (f"\n\nTest-time flip: fused with query {partner} of the mirrored image (probabilities averaged, "
            "box averaged by score).")


def query_index(outputs: QueryOutputs, query) -> int:
    """``query`` as a valid query number of ``outputs``, or a `gr.Error` saying which exist."""
    try:
        query = int(query)
    except (TypeError, ValueError):
        raise gr.Error(f"Pick a query: a number from 0 to {outputs.num_queries - 1}.") from None
    if not 0 <= query < outputs.num_queries:
        raise gr.Error(f"Query {query} does not exist; this model has queries 0 to {outputs.num_queries - 1}.")
    return query


def grid_select(state: AppState, key: str, evt: gr.SelectData) -> int:
    """The query under a click on the grid picture."""
    outputs = state.queries.get(key).outputs
    x, y = evt.index
    query = grid_query_at(outputs.num_queries, x, y)
    if query is None:
        raise gr.Error("That click was outside the grid; click a cell.")
    return query


def table_select(evt: gr.SelectData) -> int:
    """The query of the clicked table row (its first column, so it survives sorting)."""
    return int(evt.row_value[0])


def slot_specialization(state: AppState, images: list, model_name: str, slots_text: str, size: int | None = None):
    """Fig. 7 of the DETR paper over ``images``: where each chosen slot puts its boxes."""
    if not images:
        raise gr.Error("Add images first: upload several in the Detect tab or send some to review.")
    size = processing_size(size)
    detector = detector_for(state.models, model_name)
    try:
        pictures = [load_image(image) for image in images]
    except ImageError as error:
        raise gr.Error(str(error)) from None
    num_queries = detector.model.config.num_queries
    slots = parse_slots(slots_text, num_queries)
    outputs = state.gpu.predict(detector, pictures, shortest_edge=size)
    centers, sizes = [], []
    for out in outputs:
        boxes = box_xyxy_to_cxcywhn(out.boxes, *out.image_size)
        centers.append(boxes[:, :2])
        sizes.append(boxes[:, 2:])
    return slot_plot(np.stack(centers), np.stack(sizes), slots,
                     f"{detector.name}: box centres of {len(slots)} slots over {len(outputs)} images")


def parse_slots(text: str, num_queries: int) -> list[int]:
    """``"0-9, 42"`` -> ``[0, ..., 9, 42]``; empty text = the first 20 slots.

    >>> parse_slots("3, 0-2", 100)
    [0, 1, 2, 3]
    """
    if not text or not text.strip():
        return list(range(min(20, num_queries)))
    slots: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            low, _, high = part.partition("-")
            slots.update(range(int(low), int(high or low) + 1))
        except ValueError:
            raise gr.Error(f"Cannot read slots {part!r}; write numbers and ranges like '0-9, 42'.") from None
    if not slots or min(slots) < 0 or max(slots) >= num_queries:
        raise gr.Error(f"Slots must lie between 0 and {num_queries - 1}.")
    if len(slots) > 50:
        raise gr.Error("Pick at most 50 slots so the plot stays readable.")
    return sorted(slots)

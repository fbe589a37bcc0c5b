"""Pictures the app draws: the query grid, attention overlays, the slot plot and PR curves."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import supervision as sv  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from core.inference import QueryOutputs  # noqa: E402

GRID_CELL = 44  # pixels per query cell


def grid_shape(num_queries: int) -> tuple[int, int]:
    """``(rows, cols)`` for N query cells: 10x10 for 100, 15x20 for 300, near-square otherwise.

    >>> grid_shape(100), grid_shape(300), grid_shape(12), grid_shape(7)
    ((10, 10), (15, 20), (3, 4), (3, 3))
    """
    root = math.sqrt(num_queries)
    for cols in range(math.ceil(root), int(2 * root) + 1):
        if num_queries % cols == 0:
            return num_queries // cols, cols
    cols = math.ceil(root)
    return math.ceil(num_queries / cols), cols


def class_color(class_id: int) -> tuple[int, int, int]:
    """The colour `core.annotate` uses for ``class_id`` (supervision's default palette)."""
    return sv.ColorPalette.DEFAULT.by_idx(int(class_id)).as_rgb()


def query_grid(outputs: QueryOutputs, threshold: float, selected: int | None = None) -> np.ndarray:
    """One cell per query in index order, coloured by top class and shaded by its score.

    Queries that pass ``threshold`` get a white frame, the selected one a thick yellow frame, so
    empty slots (dark) and duplicates (two bright cells of one colour) stand out.
    """
    rows, cols = grid_shape(outputs.num_queries)
    cell = GRID_CELL
    picture = Image.new("RGB", (cols * cell, rows * cell), (24, 24, 24))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=12)
    dark = np.array([40, 40, 40], dtype=float)
    for query in range(outputs.num_queries):
        row, col = divmod(query, cols)
        score = float(outputs.scores[query])
        color = dark + (np.array(class_color(outputs.label_ids[query]), dtype=float) - dark) * score
        box = [col * cell + 1, row * cell + 1, (col + 1) * cell - 2, (row + 1) * cell - 2]
        outline = (255, 255, 255) if score >= threshold else None
        draw.rectangle(box, fill=tuple(int(c) for c in color), outline=outline, width=2)
        text = (255, 255, 255) if color.mean() < 140 else (0, 0, 0)
        draw.text((box[0] + 4, box[1] + 3), str(query), fill=text, font=font)
    if selected is not None and 0 <= selected < outputs.num_queries:
        row, col = divmod(selected, cols)
        draw.rectangle([col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1], outline=(255, 221, 0),
                       width=4)
    return np.asarray(picture)


def grid_query_at(num_queries: int, x: float, y: float) -> int | None:
    """The query whose cell holds pixel ``(x, y)`` of `query_grid`'s picture, or None outside."""
    rows, cols = grid_shape(num_queries)
    col, row = int(x // GRID_CELL), int(y // GRID_CELL)
    query = row * cols + col
    return query if 0 <= col < cols and 0 <= row < rows and query < num_queries else None


def attention_overlay(image: np.ndarray, heatmap: np.ndarray, box: np.ndarray, caption: str,
                      class_id: int, min_side: int = 512) -> np.ndarray:
    """The image with ``heatmap`` (``[H, W]``, any scale) blended in and the query's box drawn.

    Small images are enlarged so their longer side is at least ``min_side`` pixels: a 200-pixel
    shapes image would otherwise show its heatmap as a thumbnail.
    """
    height, width = image.shape[:2]
    zoom = max(1.0, min_side / max(height, width))
    if zoom > 1:
        size = (round(width * zoom), round(height * zoom))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        heatmap = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
        box = np.asarray(box, dtype=np.float64) * zoom
    span = float(heatmap.max() - heatmap.min())
    scaled = (heatmap - heatmap.min()) / span if span > 0 else np.zeros_like(heatmap)
    colored = plt.get_cmap("inferno")(scaled)[..., :3] * 255
    blended = (0.45 * image.astype(float) + 0.55 * colored).clip(0, 255).astype(np.uint8)
    detections = sv.Detections(xyxy=np.asarray(box).reshape(1, 4).astype(np.float32), class_id=np.array([class_id]))
    thickness = max(2, round(min(blended.shape[:2]) / 250))
    blended = sv.BoxAnnotator(thickness=thickness, color_lookup=sv.ColorLookup.CLASS).annotate(blended, detections)
    return sv.LabelAnnotator(text_scale=max(0.4, min(blended.shape[:2]) / 1000), color_lookup=sv.ColorLookup.CLASS,
                             smart_position=True).annotate(blended, detections, labels=[caption])


def slot_plot(centers: np.ndarray, sizes: np.ndarray, slots: list[int], title: str) -> plt.Figure:
    """The DETR paper's Fig. 7: per slot, the centres of its boxes over a dataset.

    ``centers`` ``[images, N, 2]`` and ``sizes`` ``[images, N, 2]`` (width, height), normalized to the
    image. Colours as in the paper: green small boxes, red large wide ones, blue large tall ones.
    """
    cols = min(5, len(slots))
    rows = math.ceil(len(slots) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    area = sizes[..., 0] * sizes[..., 1]
    small = area < 0.05
    wide = ~small & (sizes[..., 0] >= sizes[..., 1])
    colors = np.where(small[..., None], [0.2, 0.7, 0.2], np.where(wide[..., None], [0.85, 0.2, 0.2], [0.2, 0.3, 0.9]))
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, slot in zip(axes.flat, slots):
        ax.set_axis_on()
        ax.scatter(centers[:, slot, 0], centers[:, slot, 1], c=colors[:, slot], s=6, alpha=0.7)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # image coordinates: y grows downwards
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"slot {slot}", fontsize=9)
    figure.suptitle(f"{title}\ngreen: small · red: large wide · blue: large tall", fontsize=9)
    figure.tight_layout()
    return figure


def pr_curves(recall: np.ndarray, precision_by_class: dict[str, np.ndarray]) -> plt.Figure:
    """Precision-recall curves (COCO's 101 recall points, averaged over IoU 0.5:0.95)."""
    figure, ax = plt.subplots(figsize=(5, 3.6))
    for name, precision in precision_by_class.items():
        ax.plot(recall, np.clip(precision, 0, 1), label=name)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if precision_by_class:
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure

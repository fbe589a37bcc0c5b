"""Inference that keeps every object query, and thresholding into `sv.Detections`.

`predict` runs a detector on a batch of images and returns one `QueryOutputs` per image: for each
of the model's N object queries its class probabilities, top label and score, no-object
probability and box in pixels of the original image, and, when asked, its decoder
cross-attention map. `QueryOutputs.to_detections` turns that into the project's boundary type.

No-object probability:
    DETR (softmax over C classes + "no object"): the no-object column itself, so
    ``score + no_object <= 1``.
    Conditional DETR (an independent sigmoid per class, no no-object logit): ``1 - max_c p_c``,
    the probability mass the query's best class leaves unclaimed. With this definition a query
    passes a threshold ``t`` exactly when ``no_object <= 1 - t``, as for DETR.

Test-time flip (`flip_fused`, a detector whose config.json sets ``test_time_flip``): the image is
also run mirrored, and each query is fused with the query of the mirrored pass that found the same
object (same top class, boxes overlapping by IoU > 0.55 once mirrored back, one-to-one): their
boxes averaged by score, their probabilities averaged. A query the mirrored pass does not confirm
has its probabilities averaged with "nothing there" (halved; for DETR the other half goes to
no-object). The N queries stay the N queries of the image as it is, so query i is still query i.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import supervision as sv
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment

from core.boxes import box_cxcywhn_to_xyxy, box_iou, clip_boxes_xyxy
from core.family import ModelFamily
from core.forward import backbone_stride, feature_size
from core.images import ImageSource, load_image
from core.loading import Detector
from core.preprocess import preprocess


@dataclass
class QueryOutputs:
    """Every object query's output for one image (N queries, C classes).

    probs: ``[N, C]`` (sigmoid models) or ``[N, C + 1]`` (softmax models; last column is no-object).
    boxes: ``[N, 4]`` xyxy in pixels of the original image, clipped to it.
    label_ids: ``[N]`` index of each query's best real class (never the no-object column).
    scores: ``[N]`` probability of that class.
    no_object: ``[N]`` see the module docstring.
    labels: class names; ``labels[label_ids[i]]`` is query i's top label.
    image_size: ``(width, height)`` of the original image.
    attention: decoder layer index -> ``[heads, N, h, w]`` cross-attention over the image's
        (unpadded) feature map, kept at feature resolution; `attention_map` resizes one query's
        map to the image. Stored small because N full-size maps would be hundreds of MB.
    duplicate_iou: the detector's duplicate removal (`core.loading.Detector.duplicate_iou`): of two
        detections of one class overlapping by more than this IoU, `to_detections` (and
        `core.evaluate`) keep the higher-scoring one. None: every query stands, as DETR intends.
    flip_partner: with the test-time flip (`flip_fused`), ``[N]`` the query of the mirrored pass
        each query was fused with, -1 where none confirmed it; None without the flip.
    """

    probs: np.ndarray
    boxes: np.ndarray
    label_ids: np.ndarray
    scores: np.ndarray
    no_object: np.ndarray
    labels: list[str]
    image_size: tuple[int, int]
    attention: dict[int, np.ndarray] = field(default_factory=dict)
    duplicate_iou: float | None = None
    flip_partner: np.ndarray | None = None

    @property
    def num_queries(self) -> int:
        return int(self.scores.shape[0])

    def passed(self, threshold: float) -> np.ndarray:
        """``[N]`` bool: which queries score at least ``threshold``."""
        return self.scores >= threshold

    def to_detections(self, threshold: float = 0.7, classes: Sequence[str] | None = None) -> sv.Detections:
        """The queries that pass ``threshold`` (and are of one of ``classes``, if given), less the
        duplicates ``duplicate_iou`` removes.

        Returns `sv.Detections` in image pixels with ``class_id``, ``confidence``,
        ``data["class_name"]`` and ``data["query_index"]``, sorted by descending confidence.
        """
        keep = self.passed(threshold)
        if classes is not None:
            wanted = [self.labels.index(name) for name in classes if name in self.labels]
            keep &= np.isin(self.label_ids, wanted)
        index = np.flatnonzero(keep)
        index = index[np.argsort(-self.scores[index], kind="stable")]
        if self.duplicate_iou is not None:
            index = index[without_duplicates(self.boxes[index], self.scores[index], self.label_ids[index],
                                             self.duplicate_iou)]
        return sv.Detections(
            xyxy=self.boxes[index].astype(np.float32).reshape(-1, 4),
            confidence=self.scores[index].astype(np.float32),
            class_id=self.label_ids[index].astype(int),
            data={
                "class_name": np.array([self.labels[i] for i in self.label_ids[index]], dtype=str),
                "query_index": index.astype(int),
            },
        )

    def duplicates(self, threshold: float) -> dict[int, int]:
        """The queries that pass ``threshold`` but that duplicate removal drops: query -> the kept
        query of its class it overlaps most. Empty without ``duplicate_iou``."""
        if self.duplicate_iou is None:
            return {}
        kept = self.to_detections(threshold).data["query_index"]
        dropped = np.setdiff1d(np.flatnonzero(self.passed(threshold)), kept)
        if not len(dropped):
            return {}
        overlap = pairwise_iou(self.boxes[dropped], self.boxes[kept])
        overlap[self.label_ids[dropped][:, None] != self.label_ids[kept][None, :]] = -1
        return {int(q): int(kept[j]) for q, j in zip(dropped, overlap.argmax(1))}

    def attention_map(self, query: int, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """Query ``query``'s cross-attention resized to the image: ``[height, width]`` float32.

        ``layer`` defaults to the last stored layer; ``head=None`` averages the heads.
        """
        if not self.attention:
            raise ValueError("no attention was stored; call predict(..., attention_layers=[-1]).")
        layer = max(self.attention) if layer is None else layer
        if layer not in self.attention:
            raise ValueError(f"decoder layer {layer} was not stored; stored layers: {sorted(self.attention)}.")
        maps = self.attention[layer]
        if not 0 <= query < maps.shape[1]:
            raise ValueError(f"query {query} is out of range; this model has {maps.shape[1]} queries.")
        if head is not None and not 0 <= head < maps.shape[0]:
            raise ValueError(f"head {head} is out of range; this layer has {maps.shape[0]} heads.")
        small = maps[:, query].mean(0) if head is None else maps[head, query]
        width, height = self.image_size
        resized = F.interpolate(torch.from_numpy(small)[None, None].float(), size=(height, width), mode="bilinear",
                                align_corners=False)
        return resized[0, 0].numpy()


def duplicate_iou_problem(value: float) -> str | None:
    """What is wrong with ``value`` as a duplicate-removal setting (0: none), as a message for the
    user; None when it is usable. One rule for the fine-tune's setting and `core.evaluate`'s flag."""
    if not 0 <= value < 1:
        return f"duplicate_iou must be at least 0 and below 1 (0: no duplicate removal); got {value}."
    return None


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of xyxy pixel boxes ``[N, 4]`` and ``[M, 4]`` (`core.boxes.box_iou`, in float64)."""
    return box_iou(torch.from_numpy(np.asarray(boxes1, dtype=np.float64)),
                   torch.from_numpy(np.asarray(boxes2, dtype=np.float64)))[0].numpy()


FLIP_MATCH_IOU = 0.55  # a query and its mirrored-pass partner: same top class, boxes overlapping by more


def mirrored(image: Image.Image) -> Image.Image:
    """``image`` flipped left to right: the second pass of the test-time flip."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def flip_fused(plain: QueryOutputs, flipped: QueryOutputs, iou: float = FLIP_MATCH_IOU) -> QueryOutputs:
    """``plain``'s queries, each fused with the query of ``flipped`` (the same detector on the mirrored
    image) that found the same object (module docstring): pairs are matched one-to-one (Hungarian, on
    IoU) among queries of the same top class overlapping by more than ``iou`` once mirrored back. A pair
    has its probabilities averaged and its box averaged weighted by each one's score; an unconfirmed
    query has its probabilities averaged with nothing there (halved; a softmax model's other half goes
    to no-object). Attention maps stay ``plain``'s; ``flip_partner`` says which query was the partner."""
    if plain.probs.shape != flipped.probs.shape or plain.image_size != flipped.image_size:
        raise ValueError("flip_fused needs the same detector's outputs for an image and its mirror image.")
    width = plain.image_size[0]
    back = flipped.boxes.copy()
    back[:, [0, 2]] = width - flipped.boxes[:, [2, 0]]
    overlap = pairwise_iou(plain.boxes, back)
    overlap[plain.label_ids[:, None] != flipped.label_ids[None, :]] = 0.0
    rows, columns = linear_sum_assignment(overlap, maximize=True)
    matched = overlap[rows, columns] > iou
    rows, columns = rows[matched], columns[matched]

    classes = len(plain.labels)
    probs = plain.probs / 2  # an unconfirmed query: averaged with "nothing there"
    if probs.shape[1] > classes:  # softmax: that half is no-object
        probs[:, classes] += 0.5
    probs[rows] = (plain.probs[rows] + flipped.probs[columns]) / 2
    boxes = plain.boxes.copy()
    weight_plain, weight_flipped = plain.scores[rows, None], flipped.scores[columns, None]
    boxes[rows] = (weight_plain * plain.boxes[rows] + weight_flipped * back[columns]) / np.maximum(
        weight_plain + weight_flipped, 1e-12)
    label_ids = probs[:, :classes].argmax(1)
    scores = probs[np.arange(len(probs)), label_ids]
    partner = np.full(len(probs), -1, dtype=int)
    partner[rows] = columns
    return replace(plain, probs=probs.astype(plain.probs.dtype), boxes=boxes.astype(plain.boxes.dtype),
                   label_ids=label_ids, scores=scores.astype(plain.scores.dtype),
                   no_object=(probs[:, classes] if probs.shape[1] > classes else 1 - scores).astype(plain.scores.dtype),
                   flip_partner=partner)


def without_duplicates(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float) -> np.ndarray:
    """``[K]`` bool: which of K detections (``boxes [K, 4]`` xyxy) to keep when of two of one class
    overlapping by more than ``iou`` only the higher-scoring one stays (class-wise NMS, supervision's)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=bool)
    predictions = np.column_stack([np.asarray(boxes, dtype=np.float64).reshape(-1, 4), scores, class_ids])
    return sv.box_non_max_suppression(predictions, iou_threshold=iou)


def _class_probs(logits: torch.Tensor, family: ModelFamily) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """``logits [B, N, K]`` -> (probs, top score [B, N], top class [B, N], no-object [B, N])."""
    if family.no_object:
        probs = logits.softmax(-1)
        scores, label_ids = probs[..., :-1].max(-1)
        return probs, scores, label_ids, probs[..., -1]
    probs = logits.sigmoid()
    scores, label_ids = probs.max(-1)
    return probs, scores, label_ids, 1 - scores


def _valid_feature_size(mask: torch.Tensor, feature_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Unpadded feature-map size of each image, downsampling the pixel mask as DETR's backbone does."""
    small = F.interpolate(mask[:, None].float(), size=feature_hw)[:, 0].bool()
    return [(int(m.any(1).sum()), int(m.any(0).sum())) for m in small]


def _run_batch(
    detector: Detector,
    images: list,
    shortest_edge: int | None,
    longest_edge: int | None,
    attention_layers: Sequence[int] | None,
) -> list[QueryOutputs]:
    model = detector.model
    device = detector.device
    batch = preprocess(images, detector.preprocess, device, shortest_edge, longest_edge)
    if detector.engine is not None and not attention_layers:  # ONNX Runtime / OpenVINO: the forward pass only
        logits, boxes = (torch.from_numpy(np.asarray(a)).float() for a in detector.engine(
            batch.pixel_values.contiguous().numpy(), batch.pixel_mask.numpy()))
        outputs = None
    else:
        bf16 = device.type == "cuda" or (device.type == "cpu" and detector.cpu_bf16)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        with torch.inference_mode(), autocast:
            outputs = model(
                pixel_values=batch.pixel_values.contiguous(memory_format=torch.channels_last),
                pixel_mask=batch.pixel_mask,
                output_attentions=bool(attention_layers),
            )
        logits, boxes = outputs.logits.float(), outputs.pred_boxes.float()  # boxes: [B, N, 4] normalized cxcywh
    probs, scores, label_ids, no_object = _class_probs(logits, detector.family)

    attention: dict[int, torch.Tensor] = {}
    valid: list[tuple[int, int]] = []
    if attention_layers:
        cross = outputs.cross_attentions
        if cross is None or cross[0] is None:
            raise ValueError(
                "the model returned no cross-attention; load it with attn_implementation='eager'."
            )
        num_layers = len(cross)
        feature_hw = feature_size(batch.pixel_values.shape[-2:], backbone_stride(model.config))
        valid = _valid_feature_size(batch.pixel_mask, feature_hw)
        for layer in attention_layers:
            if not -num_layers <= layer < num_layers:
                raise ValueError(f"decoder layer {layer} does not exist; the model has {num_layers}.")
            index = layer % num_layers
            attention[index] = cross[index].float().unflatten(-1, feature_hw)  # [B, heads, N, h, w]

    results = []
    for i, (height, width) in enumerate(batch.original_sizes):
        pixel_boxes = clip_boxes_xyxy(box_cxcywhn_to_xyxy(boxes[i], width, height), width, height)
        maps = {layer: att[i, :, :, : valid[i][0], : valid[i][1]].cpu().numpy() for layer, att in attention.items()}
        results.append(
            QueryOutputs(
                probs=probs[i].cpu().numpy(),
                boxes=pixel_boxes.cpu().numpy(),
                label_ids=label_ids[i].cpu().numpy(),
                scores=scores[i].cpu().numpy(),
                no_object=no_object[i].cpu().numpy(),
                labels=detector.labels,
                image_size=(width, height),
                attention=maps,
                duplicate_iou=detector.duplicate_iou,
            )
        )
    return results


def predict(
    detector: Detector,
    images: Sequence[ImageSource],
    shortest_edge: int | None = None,
    longest_edge: int | None = None,
    attention_layers: Sequence[int] | None = None,
    batch_size: int = 8,
    test_time_flip: bool | None = None,
) -> list[QueryOutputs]:
    """Run ``detector`` on ``images`` and keep every object query.

    Args:
        images: paths, bytes, PIL images or arrays; decoded with `core.images.load_image`.
        shortest_edge / longest_edge: override the model's resize rule (e.g. 512 on CPU).
        attention_layers: decoder layers whose cross-attention to keep (``[-1]`` = last);
            None keeps none and is faster.
        batch_size: images per forward pass; mixed sizes are padded within a batch.
        test_time_flip: also run each image mirrored and fuse the two (`flip_fused`; the mirrored
            pass keeps no attention); None: as the detector's config says (``test_time_flip``).

    Returns:
        One `QueryOutputs` per image, in order.

    Example::

        outputs = predict(load_detector("bundled"), ["photo.jpg"], attention_layers=[-1])
        detections = outputs[0].to_detections(threshold=0.7)  # sv.Detections
        heatmap = outputs[0].attention_map(query=int(detections.data["query_index"][0]))
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    flip = detector.test_time_flip if test_time_flip is None else test_time_flip
    decoded = [load_image(image) for image in images]
    results: list[QueryOutputs] = []
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start : start + batch_size]
        outputs = _run_batch(detector, chunk, shortest_edge, longest_edge, attention_layers)
        if flip:
            mirror = _run_batch(detector, [mirrored(image) for image in chunk], shortest_edge, longest_edge, None)
            outputs = [flip_fused(plain, flipped) for plain, flipped in zip(outputs, mirror)]
        results.extend(outputs)
    return results

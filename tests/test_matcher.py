"""Hungarian matcher: same total cost as transformers' matchers, batched == one at a time, edge cases."""

from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
from transformers.loss.loss_for_object_detection import HungarianMatcher as TransformersMatcher

from core.family import CONDITIONAL_DETR, FAMILIES
from core.matcher import HungarianMatcher


def random_targets(generator, sizes, num_classes, duplicate=False, tiny=False):
    targets = []
    for size in sizes:
        centre = torch.rand(size, 2, generator=generator) * 0.8 + 0.1
        extent = torch.rand(size, 2, generator=generator) * 0.3 + 0.02
        if tiny:
            extent = extent * 1e-3  # sub-pixel boxes
        boxes = torch.cat([centre, extent], -1)
        labels = torch.randint(0, num_classes, (size,), generator=generator)
        if duplicate and size >= 2:
            boxes[1], labels[1] = boxes[0], labels[0]  # the same object twice
        targets.append({"class_labels": labels, "boxes": boxes})
    return targets


def random_outputs(generator, batch, queries, columns):
    logits = torch.randn(batch, queries, columns, generator=generator) * 2
    boxes = torch.cat([torch.rand(batch, queries, 2, generator=generator) * 0.8 + 0.1,
                       torch.rand(batch, queries, 2, generator=generator) * 0.4 + 0.01], -1)
    return logits, boxes


CASES = [
    # (kind, batch, sizes, duplicate, tiny) - one comment per edge case
    ("detr", 4, [3, 0, 7, 1], False, False),  # an image with no targets
    ("detr", 2, [5, 5], True, False),  # duplicate target boxes (tied costs)
    ("detr", 3, [4, 2, 6], False, True),  # tiny boxes
    ("detr", 2, [20, 12], False, False),  # more targets than... close to the number of queries
    ("conditional_detr", 4, [3, 0, 7, 1], False, False),
    ("conditional_detr", 2, [5, 5], True, False),
    ("conditional_detr", 3, [4, 2, 6], False, True),
]


@pytest.mark.parametrize("kind, batch, sizes, duplicate, tiny", CASES)
@pytest.mark.parametrize("seed", range(5))
def test_total_cost_equals_transformers(kind, batch, sizes, duplicate, tiny, seed):
    generator = torch.Generator().manual_seed(seed)
    num_classes, queries = 5, 20
    columns = num_classes + 1 if kind == "detr" else num_classes
    logits, boxes = random_outputs(generator, batch, queries, columns)
    targets = random_targets(generator, sizes, num_classes, duplicate, tiny)
    ours = HungarianMatcher.for_family(FAMILIES[kind])
    if kind == "detr":
        theirs = TransformersMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    else:
        theirs = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    our_matches = ours(logits, boxes, targets)
    their_matches = theirs({"logits": logits, "pred_boxes": boxes}, targets)
    for (rows, cols), (their_rows, their_cols), size in zip(our_matches, their_matches, sizes):
        assert len(rows) == len(cols) == min(queries, size) == len(their_rows)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)  # one-to-one
    a = ours.total_cost(logits, boxes, targets, our_matches)
    b = ours.total_cost(logits, boxes, targets, their_matches)
    assert a == pytest.approx(b, rel=1e-5, abs=1e-5)


def test_batched_equals_one_image_at_a_time():
    generator = torch.Generator().manual_seed(0)
    logits, boxes = random_outputs(generator, 5, 30, 4)
    targets = random_targets(generator, [2, 9, 0, 4, 1], 3)
    matcher = HungarianMatcher()
    batched = matcher(logits, boxes, targets)
    for b, target in enumerate(targets):
        (rows, cols), = matcher(logits[b : b + 1], boxes[b : b + 1], [target])
        assert torch.equal(rows, batched[b][0]) and torch.equal(cols, batched[b][1])


def test_all_layers_in_one_call_equal_layer_by_layer():
    generator = torch.Generator().manual_seed(1)
    layers = [random_outputs(generator, 3, 16, 4) for _ in range(6)]
    logits = torch.stack([layer[0] for layer in layers])
    boxes = torch.stack([layer[1] for layer in layers])
    targets = random_targets(generator, [3, 0, 5], 3)
    matcher = HungarianMatcher.for_family(CONDITIONAL_DETR)
    together = matcher.match_layers(logits, boxes, targets)
    assert len(together) == 6
    for layer, (layer_logits, layer_boxes) in enumerate(layers):
        for (rows, cols), (r, c) in zip(together[layer], matcher(layer_logits, layer_boxes, targets)):
            assert torch.equal(rows, r) and torch.equal(cols, c)


def test_no_targets_anywhere():
    logits, boxes = random_outputs(torch.Generator().manual_seed(2), 2, 10, 4)
    empty = {"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    for rows, cols in HungarianMatcher()(logits, boxes, [empty, empty]):
        assert rows.numel() == cols.numel() == 0 and rows.dtype == torch.int64


def test_perfect_predictions_are_matched_to_themselves():
    generator = torch.Generator().manual_seed(3)
    targets = random_targets(generator, [6], 3)
    boxes = torch.rand(1, 12, 4, generator=generator) * 0.3 + 0.2
    logits = torch.full((1, 12, 4), -5.0)
    placed = torch.tensor([7, 2, 9, 0, 11, 4])
    boxes[0, placed] = targets[0]["boxes"]
    logits[0, placed, targets[0]["class_labels"]] = 5.0
    (rows, cols), = HungarianMatcher()(logits, boxes, targets)
    assert torch.equal(placed[cols], rows)


def test_nan_predictions_do_not_crash():
    generator = torch.Generator().manual_seed(4)
    logits, boxes = random_outputs(generator, 1, 8, 4)
    boxes[0, 3] = float("nan")
    (rows, _), = HungarianMatcher()(logits, boxes, random_targets(generator, [3], 3))
    assert 3 not in rows.tolist()


def test_bad_configuration():
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(class_weight=0, bbox_weight=0, giou_weight=0)

"""ATSS anchors and assignment: hand-made cases (threshold, centre-inside rule, ties), empty
targets, and the vectorised assigner against a plain loop over boxes and levels."""

from __future__ import annotations

import math

import pytest
import torch

from core.atss import atss_assign, make_anchors
from core.boxes import box_iou


def test_anchors_are_square_centred_on_each_location_level_by_level():
    anchors, levels = make_anchors([(2, 3), (1, 1)], strides=[8, 16], scale=2)
    assert anchors.shape == (7, 4) and levels.tolist() == [0] * 6 + [1]
    assert anchors[0].tolist() == [-4.0, -4.0, 12.0, 12.0]  # centre (4, 4), side 2 * 8
    assert anchors[5].tolist() == [12.0, 4.0, 28.0, 20.0]  # row 1, column 2: centre (20, 12)
    assert anchors[6].tolist() == [-8.0, -8.0, 24.0, 24.0]
    with pytest.raises(ValueError, match="2 feature sizes but 1 strides"):
        make_anchors([(2, 3), (1, 1)], strides=[8])


def test_threshold_is_mean_plus_std_of_the_candidates():
    # Three anchors on one level, all candidates (topk 3); IoUs with the box 1, 1/2 and 0 (by hand).
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [30, 30, 40, 40]])
    box = torch.tensor([[0.0, 0, 10, 10]])
    assigned, iou = atss_assign(anchors, torch.zeros(3, dtype=torch.long), box, topk=3)
    # mean 0.5, unbiased std 0.5 -> threshold 1.0: only the exact anchor reaches it
    assert assigned.tolist() == [0, -1, -1] and iou.tolist() == [1.0, 0.0, 0.0]
    # topk 2 keeps the two nearest: IoUs 1 and 1/2, mean 0.75, std 0.354 -> threshold 1.104: none
    assigned, _ = atss_assign(anchors, torch.zeros(3, dtype=torch.long), box, topk=2)
    assert assigned.tolist() == [-1, -1, -1]


def test_centre_must_lie_inside_the_box():
    # Three candidates with IoU exactly 1/3 (threshold 1/3 + 0); the first's centre (0, 15) is on
    # the box's left edge, the others' centres (15, 5) and (15, 25) are inside.
    box = torch.tensor([[0.0, 0, 30, 30]])
    anchors = torch.tensor([[-15.0, 0, 15, 30], [0.0, 0, 30, 10], [0.0, 20, 30, 30]])
    assigned, iou = atss_assign(anchors, torch.zeros(3, dtype=torch.long), box, topk=3)
    assert assigned.tolist() == [-1, 0, 0] and iou[1].item() == pytest.approx(1 / 3)


def test_an_anchor_claimed_twice_goes_to_the_box_it_overlaps_most_and_ties_to_the_first():
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    boxes = torch.tensor([[0.0, 0, 12, 12], [0.0, 0, 10, 11], [0.0, 0, 10, 11]])  # IoU 0.69, 0.91, 0.91
    assigned, iou = atss_assign(anchors, torch.zeros(1, dtype=torch.long), boxes, topk=1)
    assert assigned.tolist() == [1] and iou.item() == pytest.approx(100 / 110)


def test_no_boxes_means_every_anchor_is_negative():
    anchors, levels = make_anchors([(4, 4)], strides=[8])
    assigned, iou = atss_assign(anchors, levels, torch.zeros(0, 4))
    assert (assigned == -1).all() and (iou == 0).all()


def reference(anchors, levels, boxes, topk):
    """ATSS written plainly: one box and one level at a time."""
    assigned = torch.full((len(anchors),), -1)
    best = torch.full((len(anchors),), -1.0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for g, box in enumerate(boxes):
        centre = (box[:2] + box[2:]) / 2
        candidates = []
        for level in levels.unique():
            index = (levels == level).nonzero().squeeze(1)
            distance = (centres[index] - centre).norm(dim=1)
            candidates += index[distance.argsort()[:topk]].tolist()
        ious = box_iou(anchors[candidates], box[None])[0][:, 0]
        threshold = ious.mean() + ious.std()
        for a, value in zip(candidates, ious.tolist()):
            x, y = centres[a].tolist()
            inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
            if value >= threshold and inside and value > best[a]:
                assigned[a], best[a] = g, value
    return assigned


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_assigner_equals_the_plain_loop(seed):
    generator = torch.Generator().manual_seed(seed)
    anchors, levels = make_anchors([(16, 20), (8, 10), (4, 5)], strides=[8, 16, 32], scale=4)
    count = int(torch.randint(1, 12, (1,), generator=generator))
    top_left = torch.rand(count, 2, generator=generator) * 120
    size = torch.rand(count, 2, generator=generator) * 80 + 4
    boxes = torch.cat([top_left, top_left + size], 1)
    assigned, _ = atss_assign(anchors, levels, boxes, topk=9)
    assert torch.equal(assigned, reference(anchors, levels, boxes, topk=9))
    assert (assigned >= 0).any()  # something was assigned, so the comparison means something


def _head_inputs(batch=2, d=32, classes=3):
    from core.pyramid import SimplePyramid

    torch.manual_seed(0)
    pyramid = SimplePyramid(d, base_stride=16, strides=(8, 16, 32))
    memory = torch.randn(batch, d, 6, 8)  # a 96 x 128 input at stride 16
    features = pyramid(memory)
    anchors, levels = make_anchors([f.shape[-2:] for f in features], pyramid.strides, scale=4)
    return pyramid, features, anchors, levels


def test_pyramid_levels_have_the_right_sizes():
    from core.pyramid import SimplePyramid

    pyramid, features, anchors, levels = _head_inputs()
    assert [tuple(f.shape) for f in features] == [(2, 32, 12, 16), (2, 32, 6, 8), (2, 32, 3, 4)]
    assert anchors.shape == (12 * 16 + 6 * 8 + 3 * 4, 4)
    with pytest.raises(ValueError, match="power-of-two"):
        SimplePyramid(32, base_stride=16, strides=(12, 16))


def test_atss_head_losses_are_finite_with_and_without_boxes_and_train_the_head():
    from core.atss import ATSSHead, atss_loss

    pyramid, features, anchors, levels = _head_inputs()
    head = ATSSHead(32, num_classes=3, num_levels=3)
    boxes = torch.tensor([[10.0, 10, 60, 50], [70, 20, 120, 90]])
    targets = [{"class_labels": torch.tensor([1, 2]), "boxes_xyxy": boxes},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes_xyxy": torch.zeros(0, 4)}]  # an empty image
    assigned = [atss_assign(anchors, levels, t["boxes_xyxy"])[0] for t in targets]
    optimizer = torch.optim.AdamW([*head.parameters(), *pyramid.parameters()], lr=1e-3)
    history = []
    for _ in range(30):
        features = pyramid(torch.randn(2, 32, 6, 8, generator=torch.Generator().manual_seed(1)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, deltas, centerness = head(features)
        losses = atss_loss(logits, deltas, centerness, anchors, targets, assigned)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert history[-1]["loss_atss_giou"] < history[0]["loss_atss_giou"]
    assert history[-1]["loss_atss_cls"] < history[0]["loss_atss_cls"]
    empty = atss_loss(logits, deltas, centerness, anchors, targets[1:] * 2, assigned[1:] * 2)
    assert all(torch.isfinite(v) for v in empty.values()) and empty["loss_atss_giou"] == 0


def test_decoded_zero_deltas_are_the_anchors_and_centerness_peaks_at_the_centre():
    from core.atss import centerness_target, decode_boxes

    anchors = torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 25, 15]])
    assert torch.allclose(decode_boxes(anchors, torch.zeros(2, 4)), anchors)
    # The reference coder's stds (0.1, 0.1, 0.2, 0.2): an output of 1 moves the centre a tenth of the
    # anchor and scales the side by e^0.2; the log-scale is clamped both ways at |log(16/1000)|.
    moved = decode_boxes(anchors[:1], torch.tensor([[1.0, -1.0, 1.0, 0.0]]))[0]
    side = 10 * math.exp(0.2)
    assert torch.allclose(moved, torch.tensor([6 - side / 2, 4 - 5, 6 + side / 2, 4 + 5]), atol=1e-5)
    huge = decode_boxes(anchors[:1], torch.tensor([[0.0, 0.0, 1e4, -1e4]]))[0]
    ratio = 1000 / 16
    assert torch.allclose(huge, torch.tensor([5 - 5 * ratio, 5 - 5 / ratio, 5 + 5 * ratio, 5 + 5 / ratio]), rtol=1e-5)
    box = torch.tensor([[0.0, 0, 20, 20]] * 2)
    centred, off = torch.tensor([[5.0, 5, 15, 15]]), torch.tensor([[0.0, 0, 10, 10]])
    assert centerness_target(centred, box[:1]).item() == pytest.approx(1.0)
    assert centerness_target(off, box[:1]).item() == pytest.approx(1 / 3)  # centre (5, 5): 5/15 each way


def test_padding_anchors_take_no_part_in_the_assignment():
    """An image in a padded batch gets exactly the positives it gets alone: the anchors over the
    padding are neither candidates nor counted in a box's mean + std (as mmdet assigns over the
    anchors inside the image), and k is at most the level's valid anchors."""
    alone_anchors, alone_levels = make_anchors([(4, 4), (2, 2)], strides=[8, 16], scale=4)
    padded_anchors, padded_levels = make_anchors([(4, 8), (2, 4)], strides=[8, 16], scale=4)  # twice as wide
    centres = (padded_anchors[:, :2] + padded_anchors[:, 2:]) / 2
    valid = centres[:, 0] < 32  # the image is 32 px wide, the batch 64
    box = torch.tensor([[2.0, 8.0, 26.0, 26.0]])  # with the padding as candidates: 4 positives, not 2
    alone, alone_iou = atss_assign(alone_anchors, alone_levels, box, topk=9)
    padded, padded_iou = atss_assign(padded_anchors, padded_levels, box, topk=9, valid=valid)
    assert (padded[~valid] == -1).all()
    assert padded[valid].tolist() == alone.tolist() and torch.equal(padded_iou[valid], alone_iou)
    assert (alone >= 0).any()  # something was assigned, so the comparison means something
    unmasked, _ = atss_assign(padded_anchors, padded_levels, box, topk=9)
    assert unmasked[valid].tolist() != alone.tolist()  # the case is one where the padding used to matter


def test_head_init_and_loss_normalisers_follow_the_reference():
    from core.atss import ATSSHead, atss_loss

    head = ATSSHead(16, num_classes=2, num_levels=1)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(float(m.weight.std()) - 0.01) < 0.003 for m in convs)  # towers too: Normal(0, 0.01)
    assert all(float(m.bias.abs().max()) == 0 for m in convs if m is not head.cls)  # box, centerness, towers: 0
    assert torch.allclose(head.cls.bias, torch.full((2,), -math.log(99.0)))
    # One positive anchor whose centerness target is tiny: the GIoU term is divided by at least 1,
    # not by the tiny weight (which would make it ~1 whatever the box).
    anchors = torch.tensor([[0.0, 0, 8, 8], [40.0, 40, 48, 48]])
    box = torch.tensor([[3.9, 3.9, 40.0, 40.0]])  # the anchor centre (4, 4) is just inside a corner
    targets = [{"class_labels": torch.tensor([0]), "boxes_xyxy": box}]
    assigned = [torch.tensor([0, -1])]
    deltas = torch.zeros(1, 2, 4)
    losses = atss_loss(torch.zeros(1, 2, 2), deltas, torch.zeros(1, 2), anchors, targets, assigned)
    from core.atss import centerness_target
    from core.boxes import paired_generalized_box_iou

    weight = centerness_target(anchors[:1], box)
    expected = ((1 - paired_generalized_box_iou(anchors[:1], box)) * weight).sum() / 1.0
    assert float(weight) < 0.1 and torch.allclose(losses["loss_atss_giou"], expected)

"""Box conversions and overlaps: round trips, empty inputs, zero-area and inverted boxes."""

import numpy as np
import pytest
import torch

from core.boxes import (
    box_cxcywh_to_xyxy,
    box_cxcywhn_hflip,
    box_cxcywhn_to_xyxy,
    box_iou,
    box_mask_to_xyxy,
    box_xywh_to_xyxy,
    box_xywhn_to_xyxy,
    box_xyxy_centers,
    box_xyxy_to_cxcywh,
    box_xyxy_to_cxcywhn,
    box_xyxy_to_xywh,
    box_xyxy_to_xywhn,
    clip_boxes_xyxy,
    generalized_box_iou,
)


def random_xyxy(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    top_left = torch.rand(n, 2, generator=g) * 100
    return torch.cat([top_left, top_left + torch.rand(n, 2, generator=g) * 50], dim=-1)


@pytest.mark.parametrize(
    "forward, backward",
    [
        (box_xyxy_to_cxcywh, box_cxcywh_to_xyxy),
        (box_xyxy_to_xywh, box_xywh_to_xyxy),
        (lambda b: box_xyxy_to_xywhn(b, 640, 480), lambda b: box_xywhn_to_xyxy(b, 640, 480)),
        (lambda b: box_xyxy_to_cxcywhn(b, 640, 480), lambda b: box_cxcywhn_to_xyxy(b, 640, 480)),
        (box_cxcywhn_hflip, box_cxcywhn_hflip),  # flipping twice is the identity
    ],
)
@pytest.mark.parametrize("n", [0, 1, 17])  # 0: empty input keeps shape [0, 4]
def test_round_trip(forward, backward, n):
    boxes = random_xyxy(n)
    assert torch.allclose(backward(forward(boxes)), boxes, atol=1e-4)
    assert forward(boxes).shape == (n, 4)
    # numpy in, numpy out (COCO and FiftyOne hand us arrays and lists)
    array = boxes.numpy()
    assert np.allclose(backward(forward(array)), array, atol=1e-4)
    assert isinstance(forward(array), np.ndarray)


def test_batched_leading_dims():
    boxes = random_xyxy(12).reshape(3, 4, 4)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes, atol=1e-4)


def test_normalized_conversions_equal_the_plain_ones_scaled():
    boxes = random_xyxy(9, seed=3)
    scale = torch.tensor([640.0, 480.0, 640.0, 480.0])
    assert torch.allclose(box_xyxy_to_cxcywhn(boxes, 640, 480), box_xyxy_to_cxcywh(boxes) / scale, atol=1e-6)
    normalized = box_xyxy_to_cxcywhn(boxes, 640, 480)
    assert torch.allclose(box_cxcywhn_to_xyxy(normalized, 640, 480), box_cxcywh_to_xyxy(normalized) * scale, atol=1e-4)
    # per-image sizes broadcast: [B, N, 4] boxes with [B, 1] widths and heights
    batch = boxes.reshape(3, 3, 4)
    widths, heights = torch.tensor([[640.0], [320.0], [100.0]]), torch.tensor([[480.0], [240.0], [50.0]])
    each = torch.stack([box_xyxy_to_cxcywhn(batch[i], float(widths[i]), float(heights[i])) for i in range(3)])
    assert torch.allclose(box_xyxy_to_cxcywhn(batch, widths, heights), each)


def test_centres_and_flip_known_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert box_xyxy_centers(xyxy).tolist() == [[20.0, 40.0]]
    flipped = box_cxcywhn_hflip(torch.tensor([[0.25, 0.5, 0.2, 0.4]]))
    assert torch.allclose(flipped, torch.tensor([[0.75, 0.5, 0.2, 0.4]]))
    # the flip of the pixel box is the box of the flipped image
    image_width = 100.0
    pixel = box_cxcywhn_to_xyxy(flipped, image_width, 50.0)
    original = box_cxcywhn_to_xyxy(torch.tensor([[0.25, 0.5, 0.2, 0.4]]), image_width, 50.0)
    assert torch.allclose(pixel[:, [0, 2]], image_width - original[:, [2, 0]])


def test_known_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    assert box_xyxy_to_cxcywh(xyxy).tolist() == [[20.0, 40.0, 20.0, 40.0]]
    assert box_xyxy_to_xywh(xyxy).tolist() == [[10.0, 20.0, 20.0, 40.0]]
    assert torch.allclose(box_xyxy_to_xywhn(xyxy, 100, 200), torch.tensor([[0.1, 0.1, 0.2, 0.2]]))


def test_iou_and_giou_invariants():
    a, b = random_xyxy(5, seed=1), random_xyxy(7, seed=2)
    iou, _ = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (5, 7)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= iou + 1e-6)).all()  # GIoU never exceeds IoU
    assert torch.allclose(torch.diag(box_iou(a, a)[0]), torch.ones(5))
    assert torch.allclose(generalized_box_iou(a, b), generalized_box_iou(b, a).T)


def test_disjoint_boxes_have_negative_giou():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert box_iou(a, b)[0].item() == 0
    assert generalized_box_iou(a, b).item() == pytest.approx(0 - (3 - 2) / 3)


@pytest.mark.parametrize(
    "box",
    [
        [5.0, 5.0, 5.0, 9.0],  # zero width
        [5.0, 5.0, 5.0, 5.0],  # a point
    ],
)
def test_zero_area_boxes_give_finite_overlaps(box):
    zero = torch.tensor([box])
    other = torch.tensor([[0.0, 0.0, 10.0, 10.0], box])
    iou, _ = box_iou(zero, other)
    assert torch.isfinite(iou).all() and iou[0, 0] == 0
    assert torch.isfinite(generalized_box_iou(zero, other)).all()


def test_empty_pairwise():
    assert box_iou(torch.zeros(0, 4), random_xyxy(3))[0].shape == (0, 3)
    assert generalized_box_iou(random_xyxy(2), torch.zeros(0, 4)).shape == (2, 0)


def test_clip():
    boxes = torch.tensor([[-5.0, 10.0, 700.0, 500.0]])
    assert clip_boxes_xyxy(boxes, 640, 480).tolist() == [[0.0, 10.0, 640.0, 480.0]]


def test_the_tight_box_of_a_mask():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3] = True
    mask[4, 3:9] = True
    assert box_mask_to_xyxy(mask).tolist() == [3, 2, 9, 5]  # x2, y2 exclusive
    assert box_mask_to_xyxy(np.zeros((4, 4), dtype=bool)) is None

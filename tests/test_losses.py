"""Set-prediction losses: equal to transformers' built-in losses; target validation; one-to-many."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from core.family import FAMILIES
from core.losses import SetCriterion, TargetError, criterion_for, stack_decoder_outputs, validate_targets


def targets_for(generator, sizes, num_classes=3):
    out = []
    for size in sizes:
        centre = torch.rand(size, 2, generator=generator) * 0.6 + 0.2
        extent = torch.rand(size, 2, generator=generator) * 0.3 + 0.05
        out.append({"class_labels": torch.randint(0, num_classes, (size,), generator=generator),
                    "boxes": torch.cat([centre, extent], -1)})
    return out


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
@pytest.mark.parametrize("sizes", [[3, 1], [5, 0, 2]])  # 0: an image without objects
def test_equals_transformers_loss(kind, sizes):
    model = tiny_model(kind, auxiliary_loss=True).eval()
    config = model.config
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(len(sizes), 3, 64, 96, generator=generator)
    targets = targets_for(generator, sizes)
    with torch.no_grad():
        outputs = model(pixel_values=pixels, labels=targets)
    logits, boxes = stack_decoder_outputs(outputs)
    assert logits.shape[0] == config.decoder_layers
    # transformers weights Conditional DETR's class loss 1 (not the paper's 2): compare like with like
    ours = criterion_for(FAMILIES[kind], 3, class_weight=1.0)(logits, boxes, targets)
    assert ours["loss"].item() == pytest.approx(outputs.loss.item(), rel=1e-4)
    for name, value in outputs.loss_dict.items():
        if name.startswith("cardinality"):
            continue
        assert ours[name].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[0.5, 0.5, 0.0, 0.2]], "zero or negative width"),  # zero width
        ([[0.5, float("nan"), 0.1, 0.2]], "NaN"),  # NaN coordinate
        ([[1.5, 0.5, 0.1, 0.2]], "outside the image"),  # pixels, not normalized
    ],
)
def test_degenerate_targets_are_rejected(boxes, message):
    target = {"class_labels": torch.tensor([0]), "boxes": torch.tensor(boxes)}
    with pytest.raises(TargetError, match=message):
        validate_targets([target], num_classes=3, where="sample 'a.jpg'")


def test_label_out_of_range_and_shape_errors():
    with pytest.raises(TargetError, match="class ids outside 0..2"):
        validate_targets([{"class_labels": torch.tensor([3]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}], 3)
    with pytest.raises(TargetError, match="one label each"):
        validate_targets([{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.1, 0.1]])}], 3)
    validate_targets([{"class_labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}], 3)


def test_perfect_prediction_has_near_zero_box_loss():
    generator = torch.Generator().manual_seed(0)
    targets = targets_for(generator, [4])
    boxes = torch.rand(1, 10, 4, generator=generator) * 0.2 + 0.3
    boxes[0, :4] = targets[0]["boxes"]
    logits = torch.full((1, 10, 4), -8.0)
    logits[0, torch.arange(4), targets[0]["class_labels"]] = 8.0
    logits[0, 4:, 3] = 8.0  # the rest predict no-object
    losses = SetCriterion(3)(logits, boxes, targets)
    assert losses["loss_bbox"] < 1e-6 and losses["loss_giou"] < 1e-5 and losses["loss_ce"] < 1e-3


def test_one_to_many_layers_get_more_positives():
    generator = torch.Generator().manual_seed(0)
    targets = targets_for(generator, [3, 2])
    logits = torch.randn(3, 2, 20, 4, generator=generator, requires_grad=True)
    boxes = torch.rand(3, 2, 20, 4, generator=generator).clamp(0.05, 0.9).requires_grad_()
    hybrid = SetCriterion(3, one_to_many=4, one_to_many_layers=2)
    matches = hybrid.matcher.match_layers(logits[:1], boxes[:1], [
        {"class_labels": t["class_labels"].repeat(4), "boxes": t["boxes"].repeat(4, 1)} for t in targets])
    assert [len(rows) for rows, _ in matches[0]] == [12, 8]  # each target matched 4 times
    losses = hybrid(logits, boxes, targets)
    assert set(losses) >= {"loss_ce_0", "loss_ce_1", "loss_ce"}
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the final layer stays one-to-one: identical to the plain criterion
    plain = SetCriterion(3)(logits, boxes, targets)
    assert torch.allclose(losses["loss_ce"], plain["loss_ce"]) and torch.allclose(losses["loss_bbox"], plain["loss_bbox"])

"""Query-index distillation (`core.distill`): the targets are the frozen base model's own outputs,
training the student never changes the teacher, and a query on a reviewed box of a new class is
left out."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from core.distill import QueryDistillation
from core.forward import AllDecoderLayers
from core.heads import extend_head
from core.train import TrainConfig, train
from datasets.shapes import ShapesDataset


def settings(**overrides) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=1000, max_steps=4, batch_size=2, lr=1e-3, lr_backbone=1e-3, freeze_stem=False,
                                 shortest_edge=96, longest_edge=128, log_every=1, seed=0), **overrides})


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_targets_are_the_frozen_base_models_and_training_leaves_it_unchanged(kind):
    base = tiny_model(kind, seed=3)
    distill = QueryDistillation(base, num_old=3, min_score=0.0)
    pixels, mask = torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long)
    probs, boxes, kept = distill.targets(pixels, mask, [{"class_labels": torch.zeros(0, dtype=torch.long),
                                                         "boxes": torch.zeros(0, 4)}] * 2)
    base.eval()
    with torch.no_grad():
        own = base(pixel_values=pixels, pixel_mask=mask)
    expected = own.logits.softmax(-1) if kind == "detr" else own.logits.sigmoid()
    assert torch.allclose(probs, expected, atol=1e-6) and torch.allclose(boxes, own.pred_boxes, atol=1e-6)
    assert kept.all()

    student = tiny_model(kind, seed=3)
    extend_head(student, ["circle", "square", "triangle", "star"])  # the new class, as a fine-tune does
    snapshot = {k: v.clone() for k, v in distill.teacher.state_dict().items()}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = train(student, ShapesDataset(4, first_seed=40), settings(), distill=distill)
    assert result.status == "finished" and "loss_distill" in result.last_losses
    assert all(torch.equal(v, snapshot[k]) for k, v in distill.teacher.state_dict().items())  # never trained
    assert not any(p.requires_grad for p in distill.teacher.parameters()) and not distill.teacher.training
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())  # the student did


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
@pytest.mark.parametrize("trainable", ["heads", "last_layer"])
def test_a_teacher_sharing_the_frozen_trunk_gives_what_the_whole_base_model_gives(kind, trainable):
    """With only the heads (or the last decoder layer too) training, the teacher reuses the student's
    trunk; after the student trained, its targets are still the base model's own, run whole along the
    training path (every decoder layer's predictions, as the loop computes them)."""
    base = tiny_model(kind, seed=3)
    student = tiny_model(kind, seed=3)
    extend_head(student, ["circle", "square", "triangle", "star"])
    distill = QueryDistillation(base, num_old=3, min_score=0.0, student=student)
    result = train(student, ShapesDataset(4, first_seed=40), settings(trainable=trainable), distill=distill)
    assert result.status == "finished" and result.last_losses["loss_distill"] > 0  # the student moved away

    pixels, mask = torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long)
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    student.eval()
    with torch.no_grad():
        AllDecoderLayers(student)(pixels, mask)  # the student's pass this batch, which the teacher reuses
        probs, boxes, _ = distill.targets(pixels, mask, empty)
        base.config.auxiliary_loss = True
        logits, expected_boxes = AllDecoderLayers(base.eval())(pixels, mask)
    expected = logits[-1].softmax(-1) if kind == "detr" else logits[-1].sigmoid()
    assert torch.allclose(probs, expected, atol=1e-5) and torch.allclose(boxes, expected_boxes[-1], atol=1e-5)
    with pytest.raises(RuntimeError, match="forward pass of this batch first"):  # inputs serve one batch only
        distill.targets(pixels, mask, empty)
    distill.release()
    with torch.no_grad():
        AllDecoderLayers(student)(pixels, mask)
    assert distill._last_layer_call is None  # released: no longer watching the student


@pytest.mark.parametrize("kind", ["detr", "conditional_detr"])
def test_a_teacher_sharing_the_encoder_gives_what_the_whole_base_model_gives(kind):
    """With the whole decoder training (its queries too), the teacher reuses the student's backbone
    and encoder only and runs its own decoder and queries: after the student trained, its targets
    are still the whole base model's own predictions."""
    base = tiny_model(kind, seed=3)
    student = tiny_model(kind, seed=3)
    extend_head(student, ["circle", "square", "triangle", "star"])
    distill = QueryDistillation(base, num_old=3, min_score=0.0, student=student, share_encoder=True)
    result = train(student, ShapesDataset(4, first_seed=40), settings(trainable="decoder"), distill=distill)
    assert result.status == "finished" and result.last_losses["loss_distill"] > 0
    moved = [k for k, v in student.state_dict().items() if "query_position" in k
             and not torch.equal(v, base.state_dict()[k])]
    assert moved  # the student's own queries moved: the teacher must not use them

    pixels, mask = torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long)
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    student.eval()
    with torch.no_grad():
        AllDecoderLayers(student)(pixels, mask)
        probs, boxes, _ = distill.targets(pixels, mask, empty)
        own = base.eval()(pixel_values=pixels, pixel_mask=mask)
    expected = own.logits.softmax(-1) if kind == "detr" else own.logits.sigmoid()
    assert torch.allclose(probs, expected, atol=1e-5) and torch.allclose(boxes, own.pred_boxes, atol=1e-5)
    with pytest.raises(RuntimeError, match="forward pass of this batch first"):
        distill.targets(pixels, mask, empty)
    distill.release()
    with torch.no_grad():
        AllDecoderLayers(student)(pixels, mask)
    assert distill._encoded is None


def test_a_query_on_a_reviewed_box_of_a_new_class_is_left_out():
    from core.distill import on_new_class

    teacher_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1],   # on the star below (IoU ~0.68)
                                  [0.5, 0.5, 0.1, 0.1],  # on the circle: kept
                                  [0.7, 0.7, 0.2, 0.2]])  # on nothing: kept
    target = {"class_labels": torch.tensor([3, 0]), "boxes": torch.tensor([[0.22, 0.21, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1]])}
    assert on_new_class(teacher_boxes, target, num_old=3).tolist() == [True, False, False]
    target = {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1]])}
    assert on_new_class(teacher_boxes, target, num_old=3).tolist() == [False, False, False]  # old classes only

"""Replay in fine-tuning: unreviewed samples of the same dataset, labelled by the base model for its
own classes, join training; the loss on them ignores the classes the base model lacks; they are
never validation samples; copy-paste puts into them only objects of the classes they know."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.boxes import box_xyxy_to_cxcywhn
from core.copy_paste import copy_paste
from core.family import FAMILIES
from core.losses import TargetError, criterion_for, validate_targets
from core.flags import with_flags
from training.config import FinetuneConfig


def _one_image(num_classes: int, known: list[bool] | None):
    generator = torch.Generator().manual_seed(0)
    target = {"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.3]])}
    if known is not None:
        target["known_classes"] = torch.tensor(known)
    logits = torch.randn(1, 6, num_classes, generator=generator)
    boxes = torch.rand(1, 6, 4, generator=generator) * 0.4 + 0.2
    return logits, boxes, [target]


@pytest.mark.parametrize("family", ["detr", "conditional_detr"])
def test_the_loss_ignores_classes_an_image_is_not_labelled_for(family):
    """Class 2 (say `star`) is unknown in this image: what the model says about it there costs nothing,
    while class 1 (known) still counts. Without the mask the same change costs."""
    family = FAMILIES[family]
    num_classes = 3
    columns = num_classes + (1 if family.no_object else 0)
    criterion = criterion_for(family, num_classes)
    logits, boxes, masked = _one_image(columns, [True, True, False])
    _, _, plain = _one_image(columns, None)
    shouted = logits.clone()
    shouted[..., 2] += 8.0  # every query now says "class 2" loudly
    assert torch.allclose(criterion(shouted, boxes, masked)["loss_ce"], criterion(logits, boxes, masked)["loss_ce"])
    assert not torch.allclose(criterion(shouted, boxes, plain)["loss_ce"], criterion(logits, boxes, plain)["loss_ce"])
    known_changed = logits.clone()
    known_changed[..., 1] += 8.0
    assert not torch.allclose(criterion(known_changed, boxes, masked)["loss_ce"],
                              criterion(logits, boxes, masked)["loss_ce"])
    assert torch.isfinite(criterion(shouted, boxes, masked)["loss"])


def test_a_box_of_a_class_the_image_does_not_know_is_refused():
    target = {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
              "known_classes": torch.tensor([True, True, False])}
    with pytest.raises(TargetError, match="not labelled for"):
        validate_targets([target], 3)
    with pytest.raises(TargetError, match="bool tensor of 3"):
        validate_targets([{**target, "class_labels": torch.tensor([0]), "known_classes": torch.ones(3)}], 3)


def test_copy_paste_puts_into_a_replay_image_only_classes_it_knows():
    rng = np.random.default_rng(0)
    images = [np.zeros((100, 100, 3), np.uint8), np.full((100, 100, 3), 200, np.uint8)]
    source = box_xyxy_to_cxcywhn(torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 75]]), 100, 100)
    targets = [{"class_labels": torch.tensor([3, 0]), "boxes": source},  # a reviewed image: star, circle
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4),
                "known_classes": torch.tensor([True, True, True, False])}]  # a replay image: no star labels
    pasted_into_replay = []
    for _ in range(30):
        _, out = copy_paste(images, targets, rng, probability=1.0, max_objects=2)
        pasted_into_replay += out[1]["class_labels"].tolist()
        assert torch.equal(out[1]["known_classes"], targets[1]["known_classes"])
    assert pasted_into_replay and set(pasted_into_replay) == {0}  # circles arrive, stars never


def _dataset_with_unreviewed(review_store, reviewed: int, unreviewed: int) -> tuple[list[str], list[str]]:
    from datasets.review import REVIEWED_TAG
    from training.star_check import build_review_dataset

    reviewed_ids = build_review_dataset(review_store, reviewed, unreviewed=unreviewed)
    other = [str(i) for i in review_store.dataset.match_tags(REVIEWED_TAG, bool=False).values("id")]
    assert len(other) == unreviewed
    return reviewed_ids, other


def test_replay_samples_are_unreviewed_labelled_by_the_base_model_and_never_validation(review_store, tmp_path):
    from core.inference import predict
    from core.loading import load_detector
    from training.finetune import finetune, prepare

    reviewed, unreviewed = _dataset_with_unreviewed(review_store, 10, 5)
    config = with_flags(FinetuneConfig(), replay=4, replay_score=0.5, epochs=1, batch_size=4)
    job = prepare(review_store.dataset, "bundled", config, tmp_path / "job")
    replay_ids = [r["sample_id"] for r in job["replay"]]
    val_ids = {r["sample_id"] for r in job["val"]}
    assert len(replay_ids) == 4 and set(replay_ids) <= set(unreviewed)
    assert not set(replay_ids) & val_ids and not set(replay_ids) & {r["sample_id"] for r in job["train"]}
    again = prepare(review_store.dataset, "bundled", config, tmp_path / "job2")
    assert [r["sample_id"] for r in again["replay"]] == replay_ids  # the same draw for the same dataset
    off = prepare(review_store.dataset, "bundled", with_flags(FinetuneConfig(), epochs=1), tmp_path / "job3")
    assert off["replay"] == []  # off by default
    # the labels are the base model's confident predictions, in its own classes only
    base = load_detector("bundled")
    outputs = predict(base, [r["filepath"] for r in job["replay"]], shortest_edge=job["size"],
                      longest_edge=job["longest"])  # one batch, as the job labels them (padding is shared)
    for record, output in zip(job["replay"], outputs):
        expected = output.to_detections(0.5)
        assert record["names"] == list(expected.data["class_name"])
        assert set(record["names"]) <= set(base.labels)
        np.testing.assert_allclose(np.asarray(record["boxes"]).reshape(-1, 4),
                                   np.clip(expected.xyxy, 0, [record["width"], record["height"]] * 2), atol=1e-3)
    assert any(record["names"] for record in job["replay"])  # something to replay

    result = finetune(review_store.dataset, "bundled", config, out_dir=tmp_path / "model")
    info = json.loads((tmp_path / "model" / "version.json").read_text())
    assert sorted(info["replay_ids"]) == sorted(replay_ids) and not set(info["replay_ids"]) & set(result.val_ids)
    assert set(result.train_ids) | set(result.val_ids) == set(reviewed)

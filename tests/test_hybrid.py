"""Hybrid-assignment training (Co-DETR, H-DETR): the split forward equals the model's, positive
queries (padding, anchors as reference points) stay out of the main matching, the fixed-assignment
loss agrees with the matched one, losses stay finite under autocast and with empty targets, and a
model trained with a branch is the same model (state dict keys, outputs) as one trained without."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from core.family import DETR, FAMILIES
from core.forward import AllDecoderLayers, backbone_stride, encode
from core.hybrid import CoDetrBranch, HDetrBranch, HybridConfig, build_branch, sine_box_embedding
from core.losses import criterion_for
from core.train import TrainConfig, train
from datasets.shapes import ShapesDataset

KINDS = ["detr", "conditional_detr"]


def _batch(batch=2, height=64, width=96):
    torch.manual_seed(3)
    pixels = torch.randn(batch, 3, height, width)
    mask = torch.ones(batch, height, width, dtype=torch.long)
    mask[1, :, 64:] = 0  # the second image is narrower: padding on the right
    return pixels, mask


TARGETS = [
    {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.3, 0.5], [0.7, 0.6, 0.4, 0.5]])},
    {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},  # nothing to find
]


def _branch(model, kind, **overrides):
    settings = dict(strides=(8, 16, 32), anchor_scale=4.0, anchor_reference=kind == "conditional_detr")
    return CoDetrBranch(model.config.d_model, model.config.num_labels, model.config.decoder_layers,
                        backbone_stride(model.config), **{**settings, **overrides})


def test_backbone_stride_and_box_embedding():
    model = tiny_model("detr")
    pixels, mask = _batch()
    encoded = encode(model.model, pixels, mask)
    assert backbone_stride(model.config) == encoded.stride == 64 // encoded.feature_size[0]
    assert encoded.image_sizes.tolist() == [[64, 96], [64, 64]]
    embedded = sine_box_embedding(torch.rand(2, 5, 4), num_feats=16)
    assert embedded.shape == (2, 5, 64)
    # the first frequency of each coordinate is sin / cos of 2 pi x: x = 0 gives 0 and 1
    zero = sine_box_embedding(torch.zeros(1, 4), num_feats=4)
    assert zero.tolist() == [[0.0, 1.0, 0.0, 1.0] * 4]


@pytest.mark.parametrize("kind", KINDS)
def test_branch_leaves_the_main_pass_as_the_model_computes_it(kind):
    model = tiny_model(kind).eval()
    model.config.auxiliary_loss = True
    pixels, mask = _batch()
    with torch.no_grad():
        reference = model(pixel_values=pixels, pixel_mask=mask)
        logits, boxes, extra = AllDecoderLayers(model, _branch(model, kind))(pixels, mask, TARGETS)
    assert torch.allclose(logits[-1], reference.logits, atol=1e-6)
    assert torch.allclose(boxes[-1], reference.pred_boxes, atol=1e-6)
    assert logits.shape[2] == model.config.num_queries  # the positive queries are a separate set


def record_matching(criterion) -> list[tuple[int, list[int]]]:
    """Observe the criterion's real matcher: (queries, boxes per image) of every call."""
    calls, match_layers = [], criterion.matcher.match_layers

    def recording(logits, boxes, targets):
        calls.append((logits.shape[-2], [len(t["class_labels"]) for t in targets]))
        return match_layers(logits, boxes, targets)

    criterion.matcher.match_layers = recording
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_positive_queries_never_reach_the_main_matcher(kind):
    model = tiny_model(kind)
    model.config.auxiliary_loss = True
    branch = _branch(model, kind, min_queries=25)  # more than the model's 10 queries, so counts differ
    pixels, mask = _batch()
    logits, boxes, extra = AllDecoderLayers(model, branch)(pixels, mask, TARGETS)
    criterion = criterion_for(FAMILIES[kind], model.config.num_labels)
    calls = record_matching(criterion)
    losses = criterion(logits, boxes, TARGETS)
    losses.update(branch.loss(extra, TARGETS, criterion))
    assert extra["queries"][0].shape[2] == 25
    assert [queries for queries, _ in calls] == [model.config.num_queries]  # one call, the model's queries
    assert all(torch.isfinite(v) for v in losses.values())


def test_positive_queries_are_positives_first_then_random_negatives_as_padding():
    model = tiny_model("detr")
    branch = _branch(model, "detr", min_queries=9, max_queries=40)
    pixels, mask = _batch()
    encoded = encode(model.model, pixels, mask)
    seen = {}

    def decode(encoded, content, position, reference=None):
        seen["content"] = content
        return torch.zeros(1, *content.shape[:2], 5), torch.full((1, *content.shape[:2], 4), 0.5)

    out = branch(encoded, TARGETS, decode)
    assigned, valid = out["assigned"], out["valid"]
    logits, boxes, matches = out["queries"]
    count = logits.shape[2]
    positives = int((assigned[0] >= 0).sum())
    assert positives > 0 and count == min(max(positives, 9), 40)
    rows, cols = matches[0]
    assert rows.tolist() == list(range(min(positives, 40)))
    assert set(cols.tolist()) <= {0, 1}
    assert len(matches[1][0]) == 0  # the empty image: all its queries are padding and learn "no object"
    assert (~valid[1]).any() and valid[0].all()  # the padded image's right part holds no usable anchor
    # capped: with 2 queries at most, every query of image 0 is a positive
    small = _branch(model, "detr", min_queries=2, max_queries=2)(encoded, TARGETS, decode)
    assert small["queries"][0].shape[2] == 2 and len(small["queries"][2][0][0]) == 2
    with pytest.raises(ValueError, match="min_queries"):
        _branch(model, "detr", min_queries=10, max_queries=5)


def test_anchor_centres_are_the_reference_points_of_conditional_queries():
    model = tiny_model("conditional_detr")
    model.config.auxiliary_loss = True
    with torch.no_grad():  # a box head that predicts no offset: each box centre is its reference point
        last = model.bbox_predictor.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
    network = AllDecoderLayers(model)
    pixels, mask = _batch()
    encoded = encode(model.model, pixels, mask)
    reference = torch.rand(2, 7, 2) * 0.8 + 0.1
    content = position = torch.randn(2, 7, model.config.d_model)
    _, boxes = network.decode(encoded, content, position, reference)
    assert torch.allclose(boxes[..., :2], reference.expand_as(boxes[..., :2]), atol=1e-5)
    _, unmodified = network.decode(encoded, content, position)  # the flag's other path: the decoder's own points
    assert not torch.allclose(unmodified[..., :2], boxes[..., :2], atol=1e-3)
    with pytest.raises(ValueError, match="only in Conditional DETR"):
        AllDecoderLayers(tiny_model("detr")).decode(encoded, content, position, reference)


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_assignment_loss_equals_the_matched_loss_for_the_same_matching(kind):
    torch.manual_seed(0)
    criterion = criterion_for(FAMILIES[kind], 3)
    classes = 4 if kind == "detr" else 3
    logits, boxes = torch.randn(2, 2, 6, classes), torch.rand(2, 2, 6, 4) * 0.5 + 0.25
    targets = [dict(TARGETS[0]), {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    matched = criterion(logits, boxes, targets)
    matches = criterion.matcher.match_layers(logits, boxes, targets)
    same_each_layer = matches[-1]
    fixed = criterion.fixed_assignment(logits, boxes, targets, same_each_layer, "loss_pq")
    assert fixed["loss_pq_ce"] == pytest.approx(matched["loss_ce"].item(), rel=1e-5)
    assert fixed["loss_pq_giou"] == pytest.approx(matched["loss_giou"].item(), rel=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hybrid", ["co-detr", "h-detr"])
def test_losses_are_finite_under_bf16_autocast_with_an_empty_image(kind, hybrid):
    model = tiny_model(kind)
    model.config.auxiliary_loss = True
    config = HybridConfig(method=hybrid, co_detr_strides=(8, 16, 32), anchor_scale=4.0, h_detr_queries=2)
    branch = build_branch(model, model.config.num_labels, config)
    pixels, mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, boxes, extra = AllDecoderLayers(model, branch)(pixels, mask, TARGETS)
    criterion = criterion_for(FAMILIES[kind], model.config.num_labels)
    losses = branch.loss(extra, TARGETS, criterion)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    losses["loss_hybrid"].backward()
    grads = [p.grad for p in branch.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    empty = [TARGETS[1], TARGETS[1]]
    logits, boxes, extra = AllDecoderLayers(model, branch)(pixels, mask, empty)
    assert all(torch.isfinite(v) for v in branch.loss(extra, empty, criterion).values())


def test_h_detr_group_is_matched_against_repeated_targets():
    model = tiny_model("detr")
    model.config.auxiliary_loss = True
    branch = HDetrBranch(model.config.d_model, 12, repeats=3)
    pixels, mask = _batch()
    _, _, extra = AllDecoderLayers(model, branch)(pixels, mask, TARGETS)
    assert extra["logits"].shape[2] == 12
    criterion = criterion_for(DETR, model.config.num_labels)
    calls = record_matching(criterion)
    branch.loss(extra, TARGETS, criterion)
    assert calls == [(12, [6, 0])]  # two boxes repeated three times; the empty image stays empty


@pytest.mark.parametrize("setting, trainable, one_to_many, message", [
    ({"method": "dino"}, "all", 0, "hybrid must be one of"),
    ({"method": "co-detr"}, "heads", 0, "trainable='heads'"),
    ({"method": "h-detr"}, "last_layer", 0, "trainable='last_layer'"),
    ({"method": "h-detr"}, "all", 5, "use one"),
    ({"method": "co-detr", "co_detr_lambda1": 0.0, "co_detr_lambda2": 0.0}, "all", 0, "hybrid='off'"),
    # the ATSS head's gradient reaches only the frozen encoder: it would train only itself
    ({"method": "co-detr"}, "decoder", 0, "would train only itself"),
])
def test_settings_that_cannot_work_are_refused(setting, trainable, one_to_many, message):
    with pytest.raises(ValueError, match=message):
        build_branch(tiny_model("detr"), 3, HybridConfig(**setting), trainable, one_to_many)


def test_positive_queries_alone_may_train_with_the_decoder():
    assert build_branch(tiny_model("detr"), 3, HybridConfig(method="co-detr", co_detr_lambda2=0.0), "decoder") is not None


def test_a_hybrid_layer_scheme_and_a_branch_are_refused_together():
    model = tiny_model("detr")
    branch = build_branch(model, 3, HybridConfig(method="h-detr", h_detr_queries=1))
    with pytest.raises(ValueError, match="use one"):
        train(model, ShapesDataset(2), TrainConfig(max_steps=1, one_to_many=5, one_to_many_layers=1), branch=branch)


def test_building_a_branch_leaves_the_random_stream_alone():
    """The branch's initial weights depend only on its seed, and the global random stream (the
    model's dropout, later initialisations) goes on as if no branch had been built."""
    model = tiny_model("detr")
    hybrid = HybridConfig(method="h-detr", h_detr_queries=1)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = build_branch(model, 3, hybrid, seed=1)
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(9)  # another global state, the same seed: the same weights
    b = build_branch(model, 3, hybrid, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_trained_with_co_detr_is_the_same_model(kind, tmp_path):
    """Same state dict keys and shapes, same output fields and shapes, and its outputs are what
    the plain forward computes: nothing of the branch stays in the model."""
    plain = tiny_model(kind)
    keys = {k: v.shape for k, v in plain.state_dict().items()}
    model = tiny_model(kind)
    config = TrainConfig(epochs=2, max_steps=3, batch_size=2, lr=1e-3, freeze_stem=False, shortest_edge=64,
                         longest_edge=96, checkpoint_dir=str(tmp_path / "checkpoints"))
    branch = build_branch(model, 3, HybridConfig(method="co-detr", co_detr_strides=(8, 16, 32), anchor_scale=4.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, ShapesDataset(4, first_seed=3), config, branch=branch)
    assert result.step == 3
    assert {k: v.shape for k, v in model.state_dict().items()} == keys
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # it did train
    assert (result.checkpoint / "auxiliary.safetensors").is_file()  # the branch is kept to resume, beside the model
    model.config.auxiliary_loss = False  # as training.finetune saves it
    model.save_pretrained(tmp_path / "saved")
    reloaded = type(plain).from_pretrained(tmp_path / "saved")
    assert set(reloaded.state_dict()) == set(keys)
    model.eval()
    plain.eval()
    pixels, mask = _batch()
    with torch.no_grad():
        ours, theirs = model(pixel_values=pixels, pixel_mask=mask), plain(pixel_values=pixels, pixel_mask=mask)
        again = reloaded.eval()(pixel_values=pixels, pixel_mask=mask)
    assert set(ours.keys()) == set(theirs.keys())
    assert ours.logits.shape == theirs.logits.shape and ours.pred_boxes.shape == theirs.pred_boxes.shape
    assert torch.allclose(ours.logits, again.logits, atol=1e-6)


def test_a_co_detr_run_resumes_exactly(tmp_path):
    """Stopped after 2 steps and resumed to 4, a Co-DETR run ends with the weights of 4 steps in one go
    (the branch's weights and optimizer state come back from the checkpoint)."""
    def run(model, steps, directory):
        config = TrainConfig(epochs=10, max_steps=steps, batch_size=2, lr=1e-3, freeze_stem=False, shortest_edge=64,
                             longest_edge=96, checkpoint_dir=str(directory))
        hybrid = HybridConfig(method="co-detr", co_detr_strides=(8, 16, 32), anchor_scale=4.0)
        train(model, ShapesDataset(4, first_seed=3), config, branch=build_branch(model, 3, hybrid))

    whole = tiny_model("conditional_detr")
    run(whole, 4, tmp_path / "a")
    parts = tiny_model("conditional_detr")
    run(parts, 2, tmp_path / "b")
    parts = tiny_model("conditional_detr")  # a fresh process would start from the checkpoint like this
    run(parts, 4, tmp_path / "b")
    for (name, a), b in zip(whole.state_dict().items(), parts.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hybrid", ["co-detr", "h-detr"])
def test_hybrid_training_on_cuda_with_bf16(kind, hybrid):
    """On a GPU the loop runs under bf16 autocast: the branch's losses stay finite and the model trains."""
    model = tiny_model(kind).cuda()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    config = TrainConfig(epochs=2, max_steps=4, batch_size=2, lr=1e-3, freeze_stem=False, shortest_edge=64,
                         longest_edge=96, log_every=1)
    branch = build_branch(model, 3, HybridConfig(method=hybrid, co_detr_strides=(8, 16, 32), anchor_scale=4.0,
                                                 h_detr_queries=2))
    result = train(model, ShapesDataset(4, first_seed=3), config, branch=branch,
                   progress=lambda p: seen.append(p.losses))
    assert result.step == 4 and not result.skipped_steps
    assert all(torch.isfinite(torch.tensor(v)) for losses in seen for v in losses.values())
    assert "loss_hybrid" in seen[-1]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())

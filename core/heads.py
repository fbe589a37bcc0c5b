"""Head surgery: grow a trained detector's classification head to a longer label list.

A fine-tune that meets class names the base model never had adds rows to the class head; the rows
of existing classes (and DETR's no-object row) keep their weights, so what the model knew stays.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.family import family_of


def extend_head(model: nn.Module, labels: list[str]) -> None:
    """Grow ``model``'s classification head to ``labels`` (its own labels first, in order).

    Old rows keep their weights, DETR's no-object row stays last; new rows start like a fresh
    head's (small random weights; the least likely old class's bias for softmax families, the focal
    prior p = 0.01 for sigmoid ones). Raises ``ValueError`` when ``labels`` does not start with the
    model's labels.
    """
    family = family_of(model)
    old = model.config.num_labels
    added = len(labels) - old
    if added < 0 or [model.config.id2label[i] for i in range(old)] != labels[:old]:
        raise ValueError("the new label list must start with the base model's labels, in order.")
    if added:
        layer = model.class_labels_classifier
        grown = nn.Linear(layer.in_features, len(labels) + family.class_columns_extra).to(layer.weight.device,
                                                                                          layer.weight.dtype)
        with torch.no_grad():
            grown.weight.normal_(0, 0.01)
            grown.weight[:old] = layer.weight[:old]
            grown.bias[:old] = layer.bias[:old]
            if family.no_object:
                grown.weight[-1], grown.bias[-1] = layer.weight[-1], layer.bias[-1]
                grown.bias[old:-1] = layer.bias[:old].min()  # start as unlikely as the least likely class
            else:
                grown.bias[old:] = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: p = 0.01
        model.class_labels_classifier = grown
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    model.config.num_labels = len(labels)

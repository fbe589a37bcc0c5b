"""The model family: one record per architecture that loading, inference, matcher, losses and fine-tuning read.

DETR and Conditional DETR differ in a handful of published choices, and every part of the project
must make the same ones. They live here, once:

| family | class scores | matching cost and loss weights (class / L1 / GIoU) |
| --- | --- | --- |
| DETR | softmax over C + 1 (the last column is "no object", weight ``eos_coef`` in the loss) | 1 / 5 / 2 |
| Conditional DETR | an independent sigmoid per class, focal loss and focal matching cost | 2 / 5 / 2 |

A model says which family it is through ``config.model_type``; `family_of` reads it.

    >>> family_of("conditional_detr").no_object
    False
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    ConditionalDetrConfig,
    ConditionalDetrForObjectDetection,
    DetrConfig,
    DetrForObjectDetection,
    PretrainedConfig,
    PreTrainedModel,
)


@dataclass(frozen=True)
class ModelFamily:
    """What the project needs to know about one DETR-family architecture.

    ``no_object``: the classifier has an extra last "no object" logit and class scores are a
    softmax over C + 1 (DETR); otherwise they are independent sigmoids over C, trained with the
    focal loss and matched with the focal cost (Conditional DETR). ``conditional_queries``: the
    decoder takes reference points (Conditional DETR's conditional spatial queries).
    """

    name: str  # config.json's model_type
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    no_object: bool
    conditional_queries: bool
    class_weight: float  # matching cost and loss weight of the class term
    bbox_weight: float = 5.0  # L1 on normalized cxcywh
    giou_weight: float = 2.0
    eos_coef: float = 0.1  # softmax families: the no-object class's weight in the cross-entropy
    focal_alpha: float = 0.25  # sigmoid families: focal loss and cost
    focal_gamma: float = 2.0

    @property
    def class_columns_extra(self) -> int:
        """Logit columns beyond the C real classes: 1 for the no-object column, else 0."""
        return 1 if self.no_object else 0


DETR = ModelFamily("detr", DetrConfig, DetrForObjectDetection, no_object=True, conditional_queries=False,
                   class_weight=1.0)
CONDITIONAL_DETR = ModelFamily("conditional_detr", ConditionalDetrConfig, ConditionalDetrForObjectDetection,
                               no_object=False, conditional_queries=True, class_weight=2.0)
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (DETR, CONDITIONAL_DETR)}


def family_of(what: str | PretrainedConfig | PreTrainedModel | ModelFamily) -> ModelFamily:
    """The family of a model, its config, or a ``model_type`` name.

    Raises ``ValueError`` naming the families there are when ``what`` is none of them.
    """
    if isinstance(what, ModelFamily):
        return what
    config = getattr(what, "config", what)
    name = what if isinstance(what, str) else getattr(config, "model_type", None)
    if name not in FAMILIES:
        raise ValueError(f"{name!r} is not a model family DETR Studio knows; expected one of {', '.join(FAMILIES)}.")
    return FAMILIES[name]

"""The fine-tune's settings: the training loop's own config inside, plus what only a fine-tune has.

`FinetuneConfig` *contains* a `core.train.TrainConfig` (with fine-tuning defaults) and a
`core.hybrid.HybridConfig`; the command line's flags are generated from all three
(`core.flags`), so ``--lr`` is ``FinetuneConfig.train.lr`` and ``--hybrid`` is
``FinetuneConfig.hybrid.method``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.hybrid import HybridConfig
from core.train import TrainConfig


def finetune_training() -> TrainConfig:
    """The training settings of a fine-tune on tens to hundreds of reviewed images (docs/fine-tuning.md: the star check).

    The decoder's last layer and the class and box heads train, distilled from the base model
    (`FinetuneConfig.distill`): with tens of reviewed images that learned a new class best and
    forgot least. The box head learns at a tenth of the rate (at the full rate it overfits the few
    reviewed boxes and every class's AP75 falls). Copy-paste shows it more views: every image gets up
    to 10 objects of another, cut out of their background where it is plain (`core.copy_paste`).
    ``epochs`` is an upper bound; early stopping may end sooner.
    """
    return TrainConfig(epochs=150, batch_size=8, trainable="last_layer", lr=1e-3, lr_backbone=2e-5, box_lr_scale=0.1,
                       schedule="cosine", hflip=0.5, scale_jitter=(0.875, 1.0, 1.125), copy_paste=1.0,
                       copy_paste_objects=10, log_every=5)


@dataclass
class FinetuneConfig:
    """Fine-tuning settings; defaults chosen for tens to hundreds of reviewed images (see docs/fine-tuning.md)."""

    train: TrainConfig = field(default_factory=finetune_training)
    # One-to-many training branches, dropped when training ends: not with trainable "heads" or "last_layer".
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    patience: int = 80  # epochs without a better (smoothed) validation AP before stopping
    smooth: int = 5  # an epoch's score: its validation AP averaged with the epochs before it
    tolerance: float = 0.01  # the epoch kept is the latest whose score is within this of the best so far
    # The new version's inference size: the kept epoch is scored on the validation split at these multiples of the
    # training size and the version keeps the smallest within `tolerance` of the best (a new class with fine detail,
    # like a star's points, can need more pixels than the base model's classes did). (1.0,): the training size.
    inference_scales: tuple[float, ...] = (1.0, 1.125, 1.25)
    val_fraction: float = 0.2
    # Class-wise duplicate removal the new version may keep (config.json's duplicate_iou, `core.inference`): the kept
    # epoch is scored on validation with and without it and the version keeps it unless AP is lower with it by more
    # than `tolerance` (a class learned from tens of images is often found twice; training.choices). 0: never.
    duplicate_iou: float = 0.7
    # The test-time flip the new version may keep (config.json's test_time_flip, `core.inference.flip_fused`): each
    # image also runs mirrored and the two passes are fused (boxes averaged, unconfirmed queries halved); kept unless
    # validation AP is lower with it by more than `tolerance`. Twice the forward passes. False: never.
    test_time_flip: bool = True
    # Weight of query-index distillation from the frozen base model (core.distill); 0: off. With "heads" or
    # "last_layer" training the teacher shares the student's frozen trunk and costs little.
    distill: float = 1.0
    # Replay: up to this many samples of the same dataset that are *not* reviewed join training, labelled by the
    # base model (its classes, score >= replay_score); their loss ignores the classes the base model lacks
    # (an unlabelled star there is not taught as background). Never validation samples. 0: off.
    replay: int = 0
    replay_score: float = 0.5


# Learning rates that worked for each choice of what trains (star check, docs/fine-tuning.md); the Train tab
# proposes them when the choice changes.
SUGGESTED_LR = {"heads": 3e-3, "last_layer": 1e-3, "decoder": 5e-4, "transformer": 2e-4, "all": 2e-4}

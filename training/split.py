"""The validation split of a fine-tune: a sample is in validation when the SHA-256 of its id falls
in the first ``fraction`` of the hash range. Stable as reviews are added (a sample never changes
sides), never trained on, and the same in the app, the CLI and every later fine-tune.
"""

from __future__ import annotations

import hashlib

RULE = "sha256(sample id)[:8] / 2**32 < val_fraction"  # recorded in every version.json


def hash_position(sample_id: str) -> float:
    """Where ``sample_id`` falls in [0, 1): the first 32 bits of its SHA-256."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) / 2**32


def is_validation(sample_id: str, fraction: float) -> bool:
    """Stable split: the same id is always on the same side, whatever else is in the dataset.

    >>> is_validation("6b01be74926933e4180648e3", 0.2) == is_validation("6b01be74926933e4180648e3", 0.2)
    True
    """
    return hash_position(sample_id) < fraction


def validation_ids(sample_ids: list[str], fraction: float) -> set[str]:
    """The ids that validate. With few samples the hash may pick none; then, from 5 samples on,
    the one lowest in the hash order validates."""
    chosen = {i for i in sample_ids if is_validation(i, fraction)}
    if not chosen and len(sample_ids) >= 5:
        chosen = {min(sample_ids, key=hash_position)}
    return chosen

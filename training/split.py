"""The validation split of a fine-tune: a sample is in validation when the SHA-256 of its split key
falls in the first ``fraction`` of the hash range. The key is the image's content hash (the review
store's ``content_hash``), else the sample id for samples added without one. Stable as reviews are
added (a sample never changes sides), never trained on, the same in the app, the CLI and every
later fine-tune, and, by content, the same for the same images in another dataset (so a check
that rebuilds its dataset gets the same split every run).
"""

from __future__ import annotations

import hashlib

RULE = "sha256(content_hash, else sample id)[:8] / 2**32 < val_fraction"  # recorded in every version.json


def hash_position(key: str) -> float:
    """Where ``key`` falls in [0, 1): the first 32 bits of its SHA-256."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def is_validation(key: str, fraction: float) -> bool:
    """Stable split: the same key is always on the same side, whatever else is in the dataset.

    >>> is_validation("6b01be74926933e4180648e3", 0.2) == is_validation("6b01be74926933e4180648e3", 0.2)
    True
    """
    return hash_position(key) < fraction


def validation_ids(split_keys: dict[str, str], fraction: float) -> set[str]:
    """The sample ids (keys of ``split_keys``, sample id -> split key) that validate. With few
    samples the hash may pick none; then, from 5 samples on, the one lowest in the hash order does."""
    chosen = {i for i, key in split_keys.items() if is_validation(key, fraction)}
    if not chosen and len(split_keys) >= 5:
        chosen = {min(split_keys, key=lambda i: hash_position(split_keys[i]))}
    return chosen

"""Holding part of the training images out for validation: deterministic by seed and by the sorted image keys.

The split is taken per subset (`<repeats>_<name>` folder), so every subject is represented on both sides: a subset
of n images gives round(n × fraction) of them, at least one and at most n − 1, to validation. A subset of one
image stays wholly in training; when that leaves no validation image at all, the split is refused with the reason.
Which images go depends only on the seed, the subset's name and its sorted keys, never on scan order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from .data_scan import ImageItem
from .errors import ConfigError


def held_out_count(count: int, fraction: float) -> int:
    """How many of a subset's `count` images go to validation: round(count × fraction), in [1, count − 1]."""
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, round(count * fraction)))


def held_out_keys(items: Sequence[ImageItem], fraction: float, seed: int) -> frozenset[str]:
    """The keys of the training images held out for validation; ConfigError when no image can be held out."""
    by_subset: dict[str, list[str]] = {}
    for item in items:
        if not item.is_reg:
            by_subset.setdefault(item.subset, []).append(item.key)
    held: set[str] = set()
    for subset, keys in sorted(by_subset.items()):
        ordered = sorted(keys)
        random.Random(f"validation:{seed}:{subset}").shuffle(ordered)  # str seeds are hashed stably (sha512)
        held.update(ordered[:held_out_count(len(ordered), fraction)])
    if fraction > 0 and not held:
        raise ConfigError("validation_split", fraction,
                          "holds out no image: every training folder would be left with none to train on (each has "
                          "a single image); add images or give a validation_dir")
    return frozenset(held)


def split_items(items: Sequence[ImageItem], fraction: float, seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training images, validation images) of a scanned training folder; the validation ones count once each
    (their folder's repeats only weigh training)."""
    held = held_out_keys(items, fraction, seed)
    train = [item for item in items if item.key not in held]
    validation = [replace(item, repeats=1) for item in items if item.key in held]
    return train, validation


def once_each(items: Sequence[ImageItem]) -> list[ImageItem]:
    """The images of a validation folder, each counted once (repeats do not apply to validation)."""
    return [replace(item, repeats=1) for item in items if item.repeats > 0]

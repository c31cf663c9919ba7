"""The batches of an epoch and each process's share of them, drawn from (seed, epoch) alone.

Every epoch each bucket's image uses are shuffled and cut into batches of `batch_size`, and the batch order is
shuffled, so every rank computes the same epoch; rank r then takes every world_size-th batch. Pure functions of
image indices: TrainData (data.py) turns the indices into images.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .latent_cache import derived_seed

Bucket = tuple[int, int]
"""A bucket's (width, height) in pixels."""


def epoch_batches(uses: Sequence[tuple[Bucket, int]], *, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """Every batch of `epoch` as image indices, the same on every rank; `uses[i]` is image i's (bucket, uses)."""
    rng = random.Random(derived_seed(seed, "epoch", epoch))
    by_bucket: dict[Bucket, list[int]] = {}
    for index, (bucket, count) in enumerate(uses):
        by_bucket.setdefault(bucket, []).extend([index] * count)
    batches = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches.extend(members[start:start + batch_size] for start in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches


def rank_batches(batches: Sequence[list[int]], *, rank: int, world_size: int) -> list[tuple[int, list[int]]]:
    """Rank `rank`'s (batch number, image indices); the epoch is padded with its first batches so that every rank
    gets as many (DDP steps in lockstep), as accelerate's even_batches does."""
    count = len(batches)
    padded = -(-count // world_size) * world_size
    numbered = [(number % count, batches[number % count]) for number in range(padded)]
    return numbered[rank::world_size]


def batches_per_rank(uses: Sequence[tuple[Bucket, int]], *, batch_size: int, world_size: int) -> int:
    """How many batches each rank gets in an epoch of `uses` (as `rank_batches` gives them), without drawing it."""
    counts: dict[Bucket, int] = {}
    for bucket, count in uses:
        counts[bucket] = counts.get(bucket, 0) + count
    total = sum(-(-count // batch_size) for count in counts.values())
    return -(-total // world_size)

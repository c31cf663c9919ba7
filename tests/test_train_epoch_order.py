"""The batches of an epoch and each rank's share (train/epoch_order.py): pure, deterministic per (seed, epoch)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_lora.train.epoch_order import batches_per_rank, epoch_batches, rank_batches

pytestmark = pytest.mark.hostcompat

BUCKETS = st.sampled_from([(512, 512), (448, 576), (576, 448)])
USES = st.lists(st.tuples(BUCKETS, st.integers(0, 4)), max_size=24).filter(lambda uses: sum(n for _, n in uses) > 0)


@settings(max_examples=200, deadline=None)
@given(uses=USES, seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 50), batch_size=st.integers(1, 6))
def test_an_epoch_uses_every_image_as_often_as_asked_in_batches_of_one_bucket(uses, seed, epoch, batch_size):
    batches = epoch_batches(uses, seed=seed, epoch=epoch, batch_size=batch_size)
    assert Counter(index for batch in batches for index in batch) == {i: n for i, (_, n) in enumerate(uses) if n}
    assert all(0 < len(batch) <= batch_size and len({uses[i][0] for i in batch}) == 1 for batch in batches)
    assert batches == epoch_batches(uses, seed=seed, epoch=epoch, batch_size=batch_size)


@settings(max_examples=200, deadline=None)
@given(uses=USES, seed=st.integers(0, 2**31 - 1), batch_size=st.integers(1, 6), world_size=st.integers(1, 5))
def test_every_rank_gets_as_many_batches_as_counted_and_together_all_of_them(uses, seed, batch_size, world_size):
    batches = epoch_batches(uses, seed=seed, epoch=0, batch_size=batch_size)
    shares = [rank_batches(batches, rank=rank, world_size=world_size) for rank in range(world_size)]
    counted = batches_per_rank(uses, batch_size=batch_size, world_size=world_size)
    assert all(len(share) == counted for share in shares)
    assert {number for share in shares for number, _ in share} == set(range(len(batches)))
    assert all(batch == batches[number] for share in shares for number, batch in share)


def test_epochs_and_seeds_draw_different_orders():
    uses = [((512, 512), 1)] * 12
    first = epoch_batches(uses, seed=1, epoch=0, batch_size=2)
    assert first != epoch_batches(uses, seed=1, epoch=1, batch_size=2)
    assert first != epoch_batches(uses, seed=2, epoch=0, batch_size=2)

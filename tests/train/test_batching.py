"""Batch order is a pure function of (seed, step), and process slices tile the global batch."""

from __future__ import annotations

import pytest

from pairdata import Pair
from train.batching import StepBatcher

PAIRS = [Pair(f"x{i}", f"y{i}") for i in range(10)]


def test_same_seed_same_batches_and_epochs_cover_every_pair() -> None:
    first = StepBatcher(PAIRS, 5, seed=3)
    second = StepBatcher(PAIRS, 5, seed=3)
    assert [first.global_batch(s) for s in range(4)] == [second.global_batch(s) for s in range(4)]
    assert sorted(p.x for p in first.global_batch(0) + first.global_batch(1)) == sorted(p.x for p in PAIRS)
    assert first.global_batch(0) != StepBatcher(PAIRS, 5, seed=4).global_batch(0)


def test_batches_cross_epoch_boundaries() -> None:
    batcher = StepBatcher(PAIRS, 4, seed=0)
    seen = [p for step in range(5) for p in batcher.global_batch(step)]
    assert sorted(p.x for p in seen[:10]) == sorted(p.x for p in PAIRS)
    assert sorted(p.x for p in seen[10:20]) == sorted(p.x for p in PAIRS)


def test_process_and_accumulation_slices_tile_the_global_batch() -> None:
    batcher = StepBatcher(PAIRS, 8, seed=0)
    parts = [batcher.local_micro_batches(2, rank, 2, 2) for rank in range(2)]
    # micro-batch m of rank r is part m * world + r
    ordered = [parts[r][m] for m in range(2) for r in range(2)]
    assert [p for part in ordered for p in part] == batcher.global_batch(2)


def test_batch_larger_than_data_is_rejected() -> None:
    with pytest.raises(ValueError, match="larger than the data"):
        StepBatcher(PAIRS, 11, seed=0)

"""Batch order is a pure function of (seed, step): permutations, held-out rows, process slices, mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from train.batching import (
    EpochPermutations,
    FeistelPermutation,
    HeldOut,
    MixtureBatcher,
    StepBatcher,
    apportion,
    local_slices,
)


def rows(batcher, step: int) -> list[int]:
    return batcher.global_batch(step).rows.tolist()


def test_same_seed_same_batches_and_epochs_cover_every_row() -> None:
    first, second = StepBatcher(10, 5, seed=3), StepBatcher(10, 5, seed=3)
    assert [rows(first, s) for s in range(4)] == [rows(second, s) for s in range(4)]
    assert sorted(rows(first, 0) + rows(first, 1)) == list(range(10))
    assert rows(first, 0) != rows(StepBatcher(10, 5, seed=4), 0)


def test_order_is_the_seeded_permutation_of_each_epoch() -> None:
    """The order every earlier run used: epoch e is default_rng([seed, e]).permutation(size)."""
    batcher = StepBatcher(10, 4, seed=7)
    expected = np.concatenate([np.random.default_rng([7, epoch]).permutation(10) for epoch in range(2)])
    assert [r for step in range(5) for r in rows(batcher, step)] == expected.tolist()


def test_batches_cross_epoch_boundaries() -> None:
    batcher = StepBatcher(10, 4, seed=0)
    seen = [r for step in range(5) for r in rows(batcher, step)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


@pytest.mark.parametrize("size", [1, 2, 3, 1000, 4097])
def test_feistel_permutation_is_a_bijection(size: int) -> None:
    permutation = FeistelPermutation(size, [0, 1])
    values = permutation(np.arange(size))
    assert sorted(values.tolist()) == list(range(size))
    if size > 100:
        assert not np.array_equal(values, np.arange(size))  # it shuffles
        assert not np.array_equal(values, FeistelPermutation(size, [0, 2])(np.arange(size)))


def test_large_sets_use_the_constant_memory_permutation_and_still_cover_each_epoch() -> None:
    epochs = EpochPermutations(5000, [3], array_max_rows=100)
    first = epochs.rows(0, 5000)
    assert isinstance(epochs._epoch(0), FeistelPermutation)
    assert sorted(first.tolist()) == list(range(5000))
    assert not np.array_equal(first, epochs.rows(5000, 5000))  # the next epoch is another order
    assert np.array_equal(epochs.rows(4990, 20)[:10], first[4990:])


def test_held_out_rows_are_skipped_in_row_order() -> None:
    held = HeldOut(50, 7, seed=0)
    kept = [i for i in range(50) if i not in set(held.held.tolist())]
    assert held.train_size == 43
    assert held.train_rows(np.arange(43)).tolist() == kept
    chosen = np.random.default_rng([0, 7919]).choice(50, size=7, replace=False)  # the rows earlier runs held out
    assert sorted(chosen.tolist()) == held.held.tolist()
    with pytest.raises(ValueError, match="leaves no training pairs"):
        HeldOut(5, 5, seed=0)


def test_process_and_accumulation_slices_tile_the_global_batch() -> None:
    parts = [local_slices(8, rank, 2, 2) for rank in range(2)]
    ordered = [parts[r][m] for m in range(2) for r in range(2)]  # micro-batch m of rank r is part m * world + r
    assert [i for part in ordered for i in range(8)[part]] == list(range(8))
    with pytest.raises(ValueError, match="does not split"):
        local_slices(6, 0, 2, 2)


def test_batch_larger_than_data_is_rejected() -> None:
    with pytest.raises(ValueError, match="larger than the data"):
        StepBatcher(10, 11, seed=0)


def test_mixture_is_deterministic_follows_its_weights_and_walks_each_source_in_order() -> None:
    mixture = MixtureBatcher([30, 300], [0.25, 0.75], 8, seed=1, same_source_batches=False)
    again = MixtureBatcher([30, 300], [0.25, 0.75], 8, seed=1, same_source_batches=False)
    batches = [mixture.global_batch(step) for step in range(200)]
    late = again.global_batch(150)  # a fresh batcher jumps straight to step 150 (resume)
    assert np.array_equal(late.sources, batches[150].sources) and np.array_equal(late.rows, batches[150].rows)
    sources = np.concatenate([b.sources for b in batches])
    assert abs((sources == 0).mean() - 0.25) < 0.03
    first = np.concatenate([b.rows[b.sources == 0] for b in batches])
    assert sorted(first[:30].tolist()) == list(range(30))  # source 0's first epoch, each row once


def test_same_source_batches_draw_each_batch_from_one_source() -> None:
    mixture = MixtureBatcher([40, 40, 80], [0.25, 0.25, 0.5], 8, seed=0, same_source_batches=True)
    picked = []
    for step in range(400):
        batch = mixture.global_batch(step)
        assert len(set(batch.sources.tolist())) == 1
        picked.append(int(batch.sources[0]))
    assert abs(np.mean(np.asarray(picked) == 2) - 0.5) < 0.08
    with pytest.raises(ValueError, match="every source must hold a global batch"):
        MixtureBatcher([4, 40], [0.5, 0.5], 8, seed=0, same_source_batches=True)


@pytest.mark.parametrize("same_source", [False, True], ids=["mixed", "same-source"])
def test_mixture_positions_from_scratch_equal_the_positions_reached_by_stepping(same_source: bool) -> None:
    """Small blocks (5 steps) so the walk crosses many block boundaries; a fresh batcher per probe."""
    options = {"block_rows": 40, "block_steps": 5}  # mixed: 40 // 8 = 5 steps per block
    walker = MixtureBatcher([30, 300, 50], [0.2, 0.5, 0.3], 8, 3, same_source, **options)
    reached = np.zeros(3, dtype=np.int64)
    for step in range(60):
        assert np.array_equal(MixtureBatcher([30, 300, 50], [0.2, 0.5, 0.3], 8, 3, same_source, **options)
                              .rows_before(step), reached)  # fmt: skip
        batch = walker.global_batch(step)
        counts = np.bincount(batch.sources, minlength=3)
        assert np.array_equal(counts, walker.counts(step)) and counts.sum() == 8
        for k in range(3):  # each source continues its own epochs where the previous step left it
            expected = walker.permutations[k].rows(int(reached[k]), int(counts[k]))
            assert np.array_equal(batch.rows[batch.sources == k], expected)
        reached += counts
        fresh = MixtureBatcher([30, 300, 50], [0.2, 0.5, 0.3], 8, 3, same_source, **options).global_batch(step)
        assert np.array_equal(fresh.sources, batch.sources) and np.array_equal(fresh.rows, batch.rows)


def test_each_block_gives_every_source_exactly_its_apportioned_rows() -> None:
    mixture = MixtureBatcher([1000, 1000, 1000], [0.5, 0.3, 0.2], 16, 0, False, block_rows=160)
    assert mixture.block_steps == 10 and mixture.quota.tolist() == [80, 48, 32]
    for block in range(4):
        total = sum(mixture.counts(step) for step in range(block * 10, (block + 1) * 10))
        assert total.tolist() == [80, 48, 32]
    compositions = {tuple(mixture.counts(step).tolist()) for step in range(40)}
    assert len(compositions) > 10  # the per-step composition still varies


def test_apportion_rounds_each_share_to_a_neighbour_and_keeps_the_total() -> None:
    assert apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
    assert apportion(7, [0.5, 0.25, 0.25]).sum() == 7
    parts = apportion(1 << 20, [0.123, 0.456, 0.421])
    exact = np.array([0.123, 0.456, 0.421]) * (1 << 20)
    assert parts.sum() == 1 << 20 and np.all(np.abs(parts - exact) < 1)


@pytest.mark.parametrize("same_source", [False, True], ids=["mixed", "same-source"])
def test_realised_mixture_proportions_follow_the_weights(same_source: bool) -> None:
    weights = [0.05, 0.15, 0.3, 0.5]
    mixture = MixtureBatcher([10_000] * 4, weights, 64, 11, same_source)
    steps = 4000
    shares = mixture.rows_before(steps) / (steps * 64)
    assert np.allclose(shares, weights, atol=0.02)
    assert mixture.blocks_built == 1  # default blocks: 16,384 steps of 64 rows, or 65,536 steps


def test_a_resume_at_step_one_million_builds_one_block_and_holds_only_it() -> None:
    """The old batcher replayed every earlier step's draw (O(step)); a block is built once, in O(block)."""
    mixture = MixtureBatcher([10**6] * 7, [1 / 7] * 7, 64, 5, same_source_batches=False)
    batch = mixture.global_batch(1_000_000)
    assert mixture.blocks_built == 1 and len(batch.rows) == 64
    block = 1_000_000 // mixture.block_steps
    assert np.array_equal(mixture.rows_before(block * mixture.block_steps), block * mixture.quota)
    mixture.global_batch(1_000_001)
    assert mixture.blocks_built == 1
    assert mixture._block is not None and mixture._block.slots.nbytes <= 2 * (1 << 20)  # one block: flat in the step


def test_a_weight_too_small_for_a_block_is_refused() -> None:
    with pytest.raises(ValueError, match="too small to draw"):
        MixtureBatcher([100, 100], [1 - 1e-9, 1e-9], 8, 0, same_source_batches=False)

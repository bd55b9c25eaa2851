"""Which rows make up each step's batch: a pure function of (seed, step), so runs resume exactly.

Every epoch is a fresh seeded permutation of the training rows; step ``s`` takes the global
positions ``[s*G, (s+1)*G)`` of the concatenated epochs (G = global batch) and each process its
slice. The data position of a run is therefore just its step, and the only per-row state is the
epoch's permutation: a shuffled index array up to :data:`ARRAY_PERMUTATION_MAX_ROWS` rows, above
that a keyed Feistel permutation computed on the fly (constant memory, any size).

A mixture of datasets (:class:`MixtureBatcher`) draws, per step, how many rows each source gives
(or, with ``same_source_batches``, which one source gives them all), from an RNG seeded with
``(seed, step)``; each source walks its own epochs of permutations, so its position at step ``s``
is the number of rows it gave before ``s``, again a function of (seed, step) only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ARRAY_PERMUTATION_MAX_ROWS = 1 << 22  # 4M rows: a 32 MB index array; larger sets use the Feistel permutation
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class FeistelPermutation:
    """A bijection of ``range(size)`` from a key, evaluated elementwise without storing it.

    A balanced 4-round Feistel network over the smallest even number of bits covering ``size``,
    with cycle-walking to stay inside ``range(size)`` (fewer than 4 walks per value on average).
    """

    ROUNDS = 4

    def __init__(self, size: int, key: Sequence[int]) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        bits = max(2, int(size - 1).bit_length())
        self.half_bits = (bits + 1) // 2
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        seeds = np.random.SeedSequence(list(key)).generate_state(self.ROUNDS, dtype=np.uint64)
        self.round_keys = [np.uint64(k) for k in seeds]

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        # splitmix64 finaliser of (right ^ key): a strong mix, then cut to half width.
        z = (right ^ key) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return z & self.half_mask

    def _encrypt(self, values: np.ndarray) -> np.ndarray:
        shift = np.uint64(self.half_bits)
        left, right = values >> shift, values & self.half_mask
        for key in self.round_keys:
            left, right = right, left ^ self._round(right, key)
        return (left << shift) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            out = self._encrypt(np.asarray(positions, dtype=np.uint64))
            outside = out >= np.uint64(self.size)
            while outside.any():  # cycle-walk: re-encrypt until the value lands inside range(size)
                out[outside] = self._encrypt(out[outside])
                outside = out >= np.uint64(self.size)
        return out.astype(np.int64)


class EpochPermutations:
    """The permutation of each epoch of ``size`` rows, seeded with ``(*key, epoch)``."""

    def __init__(self, size: int, key: Sequence[int], array_max_rows: int = ARRAY_PERMUTATION_MAX_ROWS) -> None:
        self.size = size
        self.key = tuple(key)
        self.array_max_rows = array_max_rows
        self._cached: tuple[int, np.ndarray | FeistelPermutation] | None = None

    def _epoch(self, epoch: int) -> np.ndarray | FeistelPermutation:
        if self._cached is None or self._cached[0] != epoch:
            if self.size <= self.array_max_rows:
                permutation = np.random.default_rng([*self.key, epoch]).permutation(self.size)
            else:
                permutation = FeistelPermutation(self.size, [*self.key, epoch])
            self._cached = (epoch, permutation)
        return self._cached[1]

    def rows(self, start: int, count: int) -> np.ndarray:
        """Row indices at positions ``[start, start + count)`` of the concatenated epochs."""
        positions = np.arange(start, start + count, dtype=np.int64)
        epochs, offsets = np.divmod(positions, self.size)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            permutation = self._epoch(int(epoch))
            out[where] = (
                permutation[offsets[where]] if isinstance(permutation, np.ndarray) else permutation(offsets[where])
            )
        return out


class HeldOut:
    """``count`` rows held out of ``size`` for validation (chosen with ``seed``), and the rest.

    Training position ``p`` maps to the ``p``-th row that is not held out, in row order, with
    memory in the held-out count only (no index array of the training rows).
    """

    def __init__(self, size: int, count: int, seed: int) -> None:
        if count >= size:
            raise ValueError(f"trainer.val_pairs={count} leaves no training pairs (the data has {size})")
        self.size = size
        chosen = np.random.default_rng([seed, 7919]).choice(size, size=count, replace=False) if count else []
        self.held = np.sort(np.asarray(chosen, dtype=np.int64))
        self._shifted = self.held - np.arange(len(self.held))  # held[j] - j: rows kept before held[j]

    @property
    def train_size(self) -> int:
        return self.size - len(self.held)

    def train_rows(self, positions: np.ndarray) -> np.ndarray:
        """Dataset rows of training positions (each in ``range(train_size)``)."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions + np.searchsorted(self._shifted, positions, side="right")


@dataclass(frozen=True)
class StepRows:
    """The rows of one global batch: ``(source, row)`` per position, in batch order."""

    sources: np.ndarray  # (G,) source index of each row
    rows: np.ndarray  # (G,) row index inside its source


def local_slices(global_batch: int, rank: int, world_size: int, accum_steps: int) -> list[slice]:
    """This process's micro-batches of a global batch: the batch cut into ``world_size * accum_steps``
    equal parts, micro-batch ``m`` of rank ``r`` being part ``m * world_size + r``."""
    parts = world_size * accum_steps
    if global_batch % parts:
        raise ValueError(f"global batch {global_batch} does not split into {parts} equal parts")
    size = global_batch // parts
    return [slice((m * world_size + rank) * size, (m * world_size + rank + 1) * size) for m in range(accum_steps)]


class StepBatcher:
    """Deterministic batches over one dataset of ``size`` training rows.

    Args:
        size: the number of training rows.
        global_batch_size: rows per step over all processes (and accumulation micro-batches).
        seed: seeds each epoch's permutation.
    """

    def __init__(self, size: int, global_batch_size: int, seed: int) -> None:
        if global_batch_size > size:
            raise ValueError(
                f"the global batch ({global_batch_size} pairs) is larger than the data ({size} pairs): "
                "lower trainer.batch_size or add data"
            )
        self.size = size
        self.global_batch_size = global_batch_size
        self.permutations = EpochPermutations(size, [seed])

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch_size / self.size

    def global_batch(self, step: int) -> StepRows:
        """The rows of optimizer step ``step`` (0-based)."""
        rows = self.permutations.rows(step * self.global_batch_size, self.global_batch_size)
        return StepRows(np.zeros(len(rows), dtype=np.int64), rows)


class MixtureBatcher:
    """Deterministic batches over several sources with weights.

    Args:
        sizes: training rows of each source.
        weights: sampling weight of each source (summing to 1).
        global_batch_size: rows per step.
        seed: seeds the draws and each source's permutations.
        same_source_batches: every global batch from one source.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        global_batch_size: int,
        seed: int,
        same_source_batches: bool,
    ) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"{len(sizes)} sources but {len(weights)} weights")
        small = [i for i, size in enumerate(sizes) if size < global_batch_size] if same_source_batches else []
        if small:
            raise ValueError(
                f"with data.same_source_batches every source must hold a global batch ({global_batch_size} pairs); "
                f"source(s) {small} have {[sizes[i] for i in small]}"
            )
        self.sizes = list(sizes)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.same_source_batches = same_source_batches
        self.permutations = [EpochPermutations(size, [seed, 1 + index]) for index, size in enumerate(sizes)]
        self._counts = np.zeros((0, len(sizes)), dtype=np.int64)  # rows each source gives at each step
        self._before = np.zeros((1, len(sizes)), dtype=np.int64)  # rows each source gave before each step

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch_size / sum(self.sizes)

    def counts(self, step: int) -> np.ndarray:
        """(K,) rows each source gives at ``step``."""
        rng = np.random.default_rng([self.seed, 104729, step])
        if self.same_source_batches:
            counts = np.zeros(len(self.sizes), dtype=np.int64)
            counts[rng.choice(len(self.sizes), p=self.weights)] = self.global_batch_size
            return counts
        return rng.multinomial(self.global_batch_size, self.weights).astype(np.int64)

    def _rows_before(self, step: int) -> np.ndarray:
        while len(self._before) <= step:  # extend the running totals (once per step over a run)
            known = len(self._counts)
            self._counts = np.vstack([self._counts, self.counts(known)[None]])
            self._before = np.vstack([self._before, self._before[-1] + self._counts[-1]])
        return self._before[step]

    def global_batch(self, step: int) -> StepRows:
        before = self._rows_before(step)
        counts = self.counts(step)
        sources = np.repeat(np.arange(len(self.sizes)), counts)
        rows = np.concatenate(
            [self.permutations[k].rows(int(before[k]), int(counts[k])) for k in range(len(self.sizes))]
        )
        order = np.random.default_rng([self.seed, 15485863, step]).permutation(len(rows))  # mix the sources
        return StepRows(sources[order], rows[order])

"""Which rows make up each step's batch: a pure function of (seed, step), so runs resume exactly.

Every epoch is a fresh seeded permutation of the training rows; step ``s`` takes the global
positions ``[s*G, (s+1)*G)`` of the concatenated epochs (G = global batch) and each process its
slice. The data position of a run is therefore just its step, and the only per-row state is the
epoch's permutation: a shuffled index array up to :data:`ARRAY_PERMUTATION_MAX_ROWS` rows, above
that a keyed Feistel permutation computed on the fly (constant memory, any size).

A mixture of datasets (:class:`MixtureBatcher`) walks each source through its own seeded epochs, so
a source's position is the number of rows it gave before the step. To find that position in
O(sources) at any step (a resume at step 1,000,000 must not replay a million draws), the steps are
cut into *blocks* whose per-source totals are fixed:

* mixed batches: a block is ``B = max(1, MIXTURE_BLOCK_ROWS // G)`` steps, i.e. ``B*G`` row slots.
  Source ``k`` owns exactly ``q_k`` of them, the largest-remainder apportionment of ``B*G*w_k``
  (the same every block); the slots are shuffled with an RNG seeded by ``(seed, block)`` and step
  ``j`` of the block takes slots ``[j*G, (j+1)*G)`` in that order. So a step's composition varies
  (a multivariate hypergeometric draw, which is the multinomial the older code drew up to a factor
  ``1 - 1/B`` on its variance) while source ``k`` has given exactly ``block*q_k`` rows before the
  block, plus its count among the block's earlier slots.
* ``same_source_batches``: a block is :data:`SAME_SOURCE_BLOCK_STEPS` steps, of which source ``k``
  owns ``round(B*w_k)`` (largest remainder), in an order shuffled by ``(seed, block)``.

The one bias this adds is the rounding: a source gets exactly its apportioned count per block, so
its long-run share is ``q_k / (B*G)`` (or ``q_k / B``) instead of ``w_k``: off by less than one slot
per block, under 1e-6 (mixed) or 1.6e-5 (same-source) of the total. A source whose share of a block
rounds to nothing is refused. Only the current block is held (its shuffled slots and per-step
running counts), so memory does not grow with the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ARRAY_PERMUTATION_MAX_ROWS = 1 << 22  # 4M rows: a 32 MB index array; larger sets use the Feistel permutation
MIXTURE_BLOCK_ROWS = 1 << 20  # row slots per block of a mixed mixture: rounding bias < 1e-6 of the rows
SAME_SOURCE_BLOCK_STEPS = 1 << 16  # steps per block with same_source_batches: bias < 1.6e-5 of the steps
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


def apportion(total: int, weights: Sequence[float]) -> np.ndarray:
    """``total`` split in proportion to ``weights`` by largest remainder: each part is the floor or the
    ceiling of its exact share, and the parts sum to ``total``."""
    exact = np.asarray(weights, dtype=np.float64) * total / float(np.sum(weights))
    counts = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - counts))[: total - int(counts.sum())]:
        counts[index] += 1
    return counts


@dataclass(frozen=True)
class _Block:
    """One block of a mixture: each slot's source in order, and each source's slots before each step."""

    index: int
    slots: np.ndarray  # (B*G,) or (B,) source of each slot, shuffled
    before: np.ndarray  # (B + 1, K) slots each source owns before step j of the block


class MixtureBatcher:
    """Deterministic batches over several sources with weights, in blocks of fixed per-source totals.

    Args:
        sizes: training rows of each source.
        weights: sampling weight of each source (summing to 1).
        global_batch_size: rows per step.
        seed: seeds the block shuffles and each source's permutations.
        same_source_batches: every global batch from one source.
        block_rows: row slots per block of mixed batches (tests use small blocks).
        block_steps: steps per block with ``same_source_batches``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        global_batch_size: int,
        seed: int,
        same_source_batches: bool,
        block_rows: int = MIXTURE_BLOCK_ROWS,
        block_steps: int = SAME_SOURCE_BLOCK_STEPS,
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
        self.block_steps = block_steps if same_source_batches else max(1, block_rows // global_batch_size)
        slots = self.block_steps if same_source_batches else self.block_steps * global_batch_size
        self.quota = apportion(slots, self.weights)  # (K,) slots of each source per block
        starved = np.flatnonzero(self.quota == 0).tolist()
        if starved:
            raise ValueError(
                f"mixture weight(s) {[float(self.weights[i]) for i in starved]} of source(s) {starved} are too small "
                f"to draw: under one of {slots} {'steps' if same_source_batches else 'rows'} per block"
            )
        self.rows_per_slot = global_batch_size if same_source_batches else 1
        self.permutations = [EpochPermutations(size, [seed, 1 + index]) for index, size in enumerate(sizes)]
        self.blocks_built = 0  # how many blocks were shuffled (a resume builds one)
        self._block: _Block | None = None

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch_size / sum(self.sizes)

    def _block_of(self, step: int) -> tuple[_Block, int]:
        """The block holding ``step`` (built once, then cached) and the step's index inside it."""
        index, offset = divmod(step, self.block_steps)
        if self._block is None or self._block.index != index:
            dtype = np.int16 if len(self.sizes) < (1 << 15) else np.int64
            slots = np.repeat(np.arange(len(self.sizes), dtype=dtype), self.quota)
            np.random.default_rng([self.seed, 104729, index]).shuffle(slots)
            per_step = len(slots) // self.block_steps
            step_of_slot = np.arange(len(slots), dtype=np.int64) // per_step
            counts = np.bincount(step_of_slot * len(self.sizes) + slots, minlength=self.block_steps * len(self.sizes))
            before = np.zeros((self.block_steps + 1, len(self.sizes)), dtype=np.int64)
            np.cumsum(counts.reshape(self.block_steps, len(self.sizes)), axis=0, out=before[1:])
            self._block = _Block(index, slots, before)
            self.blocks_built += 1
        return self._block, offset

    def rows_before(self, step: int) -> np.ndarray:
        """(K,) rows each source gave in steps ``0..step-1``: O(K) once the step's block is built."""
        block, offset = self._block_of(step)
        return (block.index * self.quota + block.before[offset]) * self.rows_per_slot

    def counts(self, step: int) -> np.ndarray:
        """(K,) rows each source gives at ``step``."""
        block, offset = self._block_of(step)
        return (block.before[offset + 1] - block.before[offset]) * self.rows_per_slot

    def global_batch(self, step: int) -> StepRows:
        block, offset = self._block_of(step)
        before = self.rows_before(step)
        if self.same_source_batches:
            sources = np.full(self.global_batch_size, block.slots[offset], dtype=np.int64)
        else:
            sources = block.slots[offset * self.global_batch_size : (offset + 1) * self.global_batch_size]
            sources = sources.astype(np.int64)
        rows = np.empty(self.global_batch_size, dtype=np.int64)
        for k in np.unique(sources).tolist():
            where = sources == k
            rows[where] = self.permutations[k].rows(int(before[k]), int(where.sum()))
        return StepRows(sources, rows)

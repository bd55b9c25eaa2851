"""Which pairs make up each step's batch: a pure function of (seed, step), so runs are reproducible.

Every epoch is a fresh seeded permutation of the pairs; step ``s`` takes the global positions
``[s*G, (s+1)*G)`` of the concatenated epochs (G = global batch) and each process its slice.
The data position of a run is therefore just its step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pairdata import Pair


class StepBatcher:
    """Deterministic batches over a list of pairs.

    Args:
        pairs: the training pairs.
        global_batch_size: pairs per step over all processes (and accumulation micro-batches).
        seed: seeds each epoch's permutation.
    """

    def __init__(self, pairs: Sequence[Pair], global_batch_size: int, seed: int) -> None:
        if global_batch_size > len(pairs):
            raise ValueError(
                f"the global batch ({global_batch_size} pairs) is larger than the data ({len(pairs)} pairs): "
                "lower trainer.batch_size or add data"
            )
        self.pairs = pairs
        self.global_batch_size = global_batch_size
        self.seed = seed
        self._epoch_cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))}
        return self._epoch_cache[epoch]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch_size / len(self.pairs)

    def global_batch(self, step: int) -> list[Pair]:
        """The ``global_batch_size`` pairs of optimizer step ``step`` (0-based)."""
        start = step * self.global_batch_size
        batch = []
        for position in range(start, start + self.global_batch_size):
            epoch, offset = divmod(position, len(self.pairs))
            batch.append(self.pairs[int(self._permutation(epoch)[offset])])
        return batch

    def local_micro_batches(self, step: int, rank: int, world_size: int, accum_steps: int) -> list[list[Pair]]:
        """This process's micro-batches of step ``step``: the global batch cut into
        ``world_size * accum_steps`` equal parts, micro-batch ``m`` of rank ``r`` being part
        ``m * world_size + r``."""
        parts = world_size * accum_steps
        if self.global_batch_size % parts:
            raise ValueError(f"global batch {self.global_batch_size} does not split into {parts} equal parts")
        size = self.global_batch_size // parts
        batch = self.global_batch(step)
        return [batch[(m * world_size + rank) * size : (m * world_size + rank + 1) * size] for m in range(accum_steps)]

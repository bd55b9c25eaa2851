"""Evaluation across processes: each process encodes a contiguous share of every text set.

``accelerate launch --num_processes N eval/run.py ...`` (or ``torchrun``) starts N copies of the
harness; :class:`Shards` reads their rank from the launcher's environment (``RANK``,
``WORLD_SIZE``) and joins a gloo process group, used only for barriers and small objects
(query embeddings, hit lists), so it works the same beside CUDA devices. Corpus embeddings do not
travel through it: each process writes its rows into its own file and every process memory-maps
all of them, so on several machines the work folder must be on a shared filesystem
(``benchmark.work_dir`` / ``cache_dir``). One process (no launcher) is the default and needs no
process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass
class Shards:
    """This process's rank among ``world`` evaluation processes."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls) -> Shards:
        """The launcher's rank and world size; joins (or reuses) a gloo process group when world > 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(rank=dist.get_rank(), world=dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def span(self, count: int) -> tuple[int, int]:
        """This process's contiguous share ``[start, end)`` of ``count`` rows (sizes differ by at most one)."""
        return self.rank * count // self.world, (self.rank + 1) * count // self.world

    def check(self, count: int, what: str) -> None:
        """Refuse more processes than rows: a process with nothing to encode is a misconfiguration."""
        if count < self.world:
            raise ValueError(
                f"{what} has {count} rows but {self.world} processes encode it; use at most {count} processes"
            )

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (picklable objects; keep them small)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

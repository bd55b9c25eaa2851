"""Everything that knows about several processes: gathering embeddings (with gradients) and keys,
of equal or of differing lengths per process."""

from __future__ import annotations

import torch


def _several(world_size: int) -> bool:
    """Whether there are other processes to gather from (not with one process or no process group)."""
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def all_gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    With one process (or no process group) the tensor is returned unchanged, so losses run the
    same everywhere. The backward pass of ``torch.distributed.nn.all_gather`` sums the gradients
    of every process's copy; with DDP's averaging of parameter gradients this makes the update
    equal to single-process training on the concatenated batch.
    """
    if not _several(world_size):
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_keys(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate integer ``keys`` (e.g. text hashes) from every process along dim 0, without gradients."""
    if not _several(world_size):
        return keys
    parts = [torch.empty_like(keys) for _ in range(world_size)]
    torch.distributed.all_gather(parts, keys.contiguous())
    return torch.cat(parts, dim=0)


def gather_counts(count: int, world_size: int, device: torch.device) -> torch.Tensor:
    """(N,) int64: ``count`` from every process (e.g. how many hard negatives each one embedded)."""
    return gather_keys(torch.tensor([count], dtype=torch.int64, device=device), world_size)


def all_gather_ragged_with_grad(
    tensor: torch.Tensor, counts: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate rows that differ in number per process, with gradients: ``(rows, valid)``.

    Every process pads its ``tensor`` with zero rows to ``counts.max()`` (collectives need equal
    shapes), so ``rows`` is ``(N * counts.max(), ...)`` and ``valid`` (same length, bool) marks the
    real rows. With one process nothing is padded.
    """
    if not _several(world_size):
        return tensor, torch.ones(len(tensor), dtype=torch.bool, device=tensor.device)
    longest = int(counts.max())
    padded = torch.nn.functional.pad(tensor, (0, 0) * (tensor.ndim - 1) + (0, longest - len(tensor)))
    positions = torch.arange(longest, device=tensor.device)
    valid = (positions[None, :] < counts.to(tensor.device)[:, None]).reshape(-1)
    return all_gather_with_grad(padded, world_size), valid


def gather_ragged_keys(keys: torch.Tensor, counts: torch.Tensor, world_size: int) -> torch.Tensor:
    """Integer ``keys`` of differing length per process, concatenated as :func:`all_gather_ragged_with_grad` pads."""
    if not _several(world_size):
        return keys
    longest = int(counts.max())
    return gather_keys(torch.nn.functional.pad(keys, (0, longest - len(keys))), world_size)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` whole on every process: FSDP2 keeps parameters sharded (``DTensor``) between steps,
    so a value read outside forward and backward (the temperature) is gathered first. Call it on
    every process (it is a collective for a sharded tensor); a plain tensor comes back unchanged."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

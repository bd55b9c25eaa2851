"""Everything that knows about several processes: gathering embeddings with gradients."""

from __future__ import annotations

import torch


def all_gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, keeping the autograd graph.

    With one process (or no process group) the tensor is returned unchanged, so losses run the
    same everywhere. The backward pass of ``torch.distributed.nn.all_gather`` sums the gradients
    of every process's copy; with DDP's averaging of parameter gradients this makes the update
    equal to single-process training on the concatenated batch.
    """
    if world_size == 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)

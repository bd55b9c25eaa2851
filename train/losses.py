"""cpt's contrastive objective: symmetric InfoNCE over in-batch negatives.

References:
    Neelakantan et al., "Text and Code Embeddings by Contrastive Pre-Training", arXiv:2201.10005.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.distributed import all_gather_with_grad


def symmetric_info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Cross-entropy in both directions, x->y and y->x, averaged; every other pair is a negative.

    With several processes, both sides are gathered with gradients so each process scores its
    local rows against the global batch; labels are offset by ``rank * local_batch``.

    Args:
        x: (B, D) L2-normalised embeddings of the first items of the local pairs.
        y: (B, D) L2-normalised embeddings of their positives.
        logit_scale: scalar ``exp(tau)``; logits are ``cos * logit_scale``.
        rank: this process's index.
        world_size: number of processes sharing negatives.

    Returns:
        ``contrastive_loss`` (scalar, differentiable) and ``accuracy`` (in-batch top-1, detached).
    """
    local = x.shape[0]
    all_x = all_gather_with_grad(x, world_size)  # (N*B, D)
    all_y = all_gather_with_grad(y, world_size)  # (N*B, D)
    labels = torch.arange(local, device=x.device) + rank * local  # (B,)
    logits_xy = logit_scale * x @ all_y.T  # (B, N*B)
    logits_yx = logit_scale * y @ all_x.T  # (B, N*B)
    loss = (F.cross_entropy(logits_xy, labels) + F.cross_entropy(logits_yx, labels)) / 2
    with torch.no_grad():
        hits = (logits_xy.argmax(dim=1) == labels).float().mean() + (logits_yx.argmax(dim=1) == labels).float().mean()
    return {"contrastive_loss": loss, "accuracy": hits / 2}

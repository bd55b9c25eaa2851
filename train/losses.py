"""cpt's contrastive objective: symmetric InfoNCE over in-batch negatives, optionally Matryoshka.

References:
    Neelakantan et al., "Text and Code Embeddings by Contrastive Pre-Training", arXiv:2201.10005.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748.
    Kusupati et al., "Matryoshka Representation Learning", arXiv:2205.13147.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.distributed import all_gather_with_grad

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Matryoshka:
    """Nested prefix sizes and their loss weights: the objective sums the weighted prefix losses."""

    dims: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def from_settings(
        cls, dims: Sequence[int] | None, weights: Sequence[float] | None, embedding_dim: int
    ) -> Matryoshka | None:
        """Build from ``trainer.matryoshka_dims`` / ``trainer.matryoshka_weights`` (weights default to 1)."""
        if dims is None:
            if weights is not None:
                raise ValueError("trainer.matryoshka_weights is set but trainer.matryoshka_dims is null")
            return None
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"trainer.matryoshka_weights has {len(weights)} values for {len(dims)} dims")
        if any(w <= 0 for w in weights):
            raise ValueError(f"trainer.matryoshka_weights must be > 0, got {weights}")
        bad = [d for d in dims if not 1 <= d <= embedding_dim]
        if bad:
            raise ValueError(f"trainer.matryoshka_dims {bad} outside 1..{embedding_dim} (the embedding size)")
        if embedding_dim not in dims:
            logger.warning("matryoshka_dims %s leave out the full size %d: it is not trained", dims, embedding_dim)
        return cls(tuple(int(d) for d in dims), tuple(float(w) for w in weights))


def _two_way(
    x: torch.Tensor,
    y: torch.Tensor,
    all_x: torch.Tensor,
    all_y: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) of the x->y and y->x cross-entropies, averaged."""
    logits_xy = scale * x @ all_y.T  # (B, N*B)
    logits_yx = scale * y @ all_x.T  # (B, N*B)
    loss = (F.cross_entropy(logits_xy, labels) + F.cross_entropy(logits_yx, labels)) / 2
    with torch.no_grad():
        hits = (logits_xy.argmax(dim=1) == labels).float().mean() + (logits_yx.argmax(dim=1) == labels).float().mean()
    return loss, hits / 2


def symmetric_info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    matryoshka: Matryoshka | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-entropy in both directions, x->y and y->x, averaged; every other pair is a negative.

    With several processes, both sides are gathered with gradients so each process scores its
    local rows against the global batch; labels are offset by ``rank * local_batch``. With
    ``matryoshka``, the same loss is also taken on each re-normalised prefix ``[:, :d]`` of the
    gathered vectors, and the objective is the weighted sum over the prefixes.

    Args:
        x: (B, D) L2-normalised embeddings of the first items of the local pairs.
        y: (B, D) L2-normalised embeddings of their positives.
        logit_scale: scalar ``exp(tau)``; logits are ``cos * logit_scale``.
        rank: this process's index.
        world_size: number of processes sharing negatives.
        matryoshka: prefix sizes and weights, or ``None`` for the plain loss.

    Returns:
        ``loss`` (the objective, differentiable), ``contrastive_loss`` (the full-size loss; equal to
        ``loss`` without Matryoshka), ``accuracy`` (full-size in-batch top-1, detached), and with
        Matryoshka ``loss@<d>`` for each prefix size (detached).
    """
    local = x.shape[0]
    all_x = all_gather_with_grad(x, world_size)  # (N*B, D)
    all_y = all_gather_with_grad(y, world_size)  # (N*B, D)
    labels = torch.arange(local, device=x.device) + rank * local  # (B,)
    full_loss, accuracy = _two_way(x, y, all_x, all_y, labels, logit_scale)
    out = {"contrastive_loss": full_loss, "accuracy": accuracy}
    if matryoshka is None:
        out["loss"] = full_loss
        return out
    objective = torch.zeros((), dtype=full_loss.dtype, device=full_loss.device)
    for dim, weight in zip(matryoshka.dims, matryoshka.weights, strict=True):
        if dim == x.shape[1]:
            prefix_loss = full_loss
        else:
            prefix = [F.normalize(t[:, :dim], dim=-1) for t in (x, y, all_x, all_y)]
            prefix_loss, _ = _two_way(*prefix, labels, logit_scale)
        objective = objective + weight * prefix_loss
        out[f"loss@{dim}"] = prefix_loss.detach()
    out["loss"] = objective
    return out

"""cpt's contrastive objective: symmetric InfoNCE over in-batch negatives, optionally with mined
hard negatives and Matryoshka prefixes.

Hard negatives join the x -> y direction only: each x is scored against every positive and every
hard negative of the global batch. The y -> x direction stays over the batch's x's, as cpt defines
its symmetric loss: a hard negative is a document, not a query, so it has no place among the
candidates for a document's query.

References:
    Neelakantan et al., "Text and Code Embeddings by Contrastive Pre-Training", arXiv:2201.10005.
    van den Oord et al., "Representation Learning with Contrastive Predictive Coding", arXiv:1807.03748.
    Kusupati et al., "Matryoshka Representation Learning", arXiv:2205.13147.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from models import check_matryoshka_dims
from train.distributed import (
    all_gather_ragged_with_grad,
    all_gather_with_grad,
    gather_counts,
    gather_keys,
    gather_ragged_keys,
)

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
        """Build from ``trainer.matryoshka_dims`` / ``trainer.matryoshka_weights`` (weights default to 1).

        The sizes are checked by :func:`models.check_matryoshka_dims`, the one owner of that rule.
        """
        if dims is None:
            if weights is not None:
                raise ValueError("trainer.matryoshka_weights is set but trainer.matryoshka_dims is null")
            return None
        weights = [1.0] * len(dims) if weights is None else list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"trainer.matryoshka_weights has {len(weights)} values for {len(dims)} dims")
        if any(w <= 0 for w in weights):
            raise ValueError(f"trainer.matryoshka_weights must be > 0, got {weights}")
        check_matryoshka_dims(dims, embedding_dim)
        if embedding_dim not in dims:
            logger.warning("matryoshka_dims %s leave out the full size %d: it is not trained", dims, embedding_dim)
        return cls(tuple(int(d) for d in dims), tuple(float(w) for w in weights))


class ContrastiveLoss(Protocol):
    """What the step calls, plain or GradCache, whatever the loss: embeddings in, named terms out.

    ``x_keys`` / ``y_keys`` (optional, (B,) int64) identify each row's texts; candidates whose x or
    y text equals the row's own are false negatives and are left out of its softmax.
    ``negatives`` (optional, (M, D)) are this process's hard negatives, any number per row (M may
    differ between processes), with their text keys ``negative_keys`` (M,).
    """

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        x_keys: torch.Tensor | None = None,
        y_keys: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        negative_keys: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]: ...


def loss_inputs(
    embeddings: torch.Tensor, micro: dict[str, torch.Tensor], logit_scale: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """A micro-batch's embeddings as the loss's positional arguments (rows: B x's, B y's, M negatives).

    Without hard negatives the call is ``loss(x, y, logit_scale, x_keys, y_keys)``, as before they existed.
    """
    rows = len(micro["x_keys"])
    inputs = (embeddings[:rows], embeddings[rows : 2 * rows], logit_scale, micro["x_keys"], micro["y_keys"])
    if "negative_keys" not in micro:
        return inputs
    return (*inputs, embeddings[2 * rows :], micro["negative_keys"])


def _two_way(
    x: torch.Tensor,
    y: torch.Tensor,
    all_x: torch.Tensor,
    all_y: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor,
    false_negatives: torch.Tensor | None = None,
    all_negatives: torch.Tensor | None = None,
    negatives_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, accuracy) of the x->y and y->x cross-entropies, averaged.

    ``all_negatives`` (N*M, D) extend the x->y candidates; ``negatives_out`` (B, N*M) marks those
    left out of a row's softmax (padding, or the row's own positive text).
    """
    logits_xy = scale * x @ all_y.T  # (B, N*B)
    logits_yx = scale * y @ all_x.T  # (B, N*B)
    if false_negatives is not None:
        logits_xy = logits_xy.masked_fill(false_negatives, float("-inf"))
        logits_yx = logits_yx.masked_fill(false_negatives, float("-inf"))
    if all_negatives is not None:
        logits_hard = scale * x @ all_negatives.T  # (B, N*M)
        if negatives_out is not None:
            logits_hard = logits_hard.masked_fill(negatives_out, float("-inf"))
        logits_xy = torch.cat([logits_xy, logits_hard], dim=1)  # positives first: labels unchanged
    loss = (F.cross_entropy(logits_xy, labels) + F.cross_entropy(logits_yx, labels)) / 2
    with torch.no_grad():
        hits = (logits_xy.argmax(dim=1) == labels).float().mean() + (logits_yx.argmax(dim=1) == labels).float().mean()
    return loss, hits / 2


def false_negative_mask(
    x_keys: torch.Tensor | None, y_keys: torch.Tensor | None, labels: torch.Tensor, world_size: int
) -> torch.Tensor | None:
    """(B, N*B) True where a candidate pair shares its x or its y text with the row's own pair.

    Such a candidate is another positive, not a negative (the same query with two documents, or
    two queries of one document). ``None`` when no keys are given or no candidate repeats a text,
    so a batch without duplicates gives exactly the unmasked loss.
    """
    if x_keys is None or y_keys is None:
        return None
    all_x_keys, all_y_keys = gather_keys(x_keys, world_size), gather_keys(y_keys, world_size)  # (N*B,)
    same = (x_keys[:, None] == all_x_keys[None, :]) | (y_keys[:, None] == all_y_keys[None, :])  # (B, N*B)
    same[torch.arange(len(labels), device=labels.device), labels] = False
    return same if bool(same.any()) else None


def hard_negative_candidates(
    negatives: torch.Tensor,
    negative_keys: torch.Tensor | None,
    y_keys: torch.Tensor | None,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The global batch's hard negatives ``(N*M, D)`` and the (B, N*M) mask of those a row leaves out.

    Left out: the zero rows that pad a process's negatives to the longest, and a negative whose text
    is the row's own positive. ``None`` when no process has a negative (the plain loss, exactly).
    """
    counts = gather_counts(len(negatives), world_size, negatives.device)  # (N,)
    if int(counts.sum()) == 0:
        return None
    all_negatives, valid = all_gather_ragged_with_grad(negatives, counts, world_size)
    out = ~valid[None, :]  # (1, N*M)
    if negative_keys is not None and y_keys is not None:
        all_keys = gather_ragged_keys(negative_keys, counts, world_size)
        out = out | (y_keys[:, None] == all_keys[None, :])  # (B, N*M)
    return all_negatives, (out if bool(out.any()) else None)


class InfoNCE:
    """cpt's symmetric InfoNCE: cross-entropy x->y and y->x, averaged; every other pair a negative.

    With several processes, both sides are gathered with gradients so each process scores its
    local rows against the global batch; labels are offset by ``rank * local_batch``. Hard
    negatives, when given, are gathered the same way and join the x->y candidates only.

    Args:
        rank: this process's index.
        world_size: number of processes sharing negatives.

    Returns (of a call):
        ``loss`` (differentiable), ``contrastive_loss`` (the same value) and ``accuracy``
        (in-batch top-1 of both directions, detached).
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        x_keys: torch.Tensor | None = None,
        y_keys: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        negative_keys: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        local = x.shape[0]
        all_x = all_gather_with_grad(x, self.world_size)  # (N*B, D)
        all_y = all_gather_with_grad(y, self.world_size)  # (N*B, D)
        labels = torch.arange(local, device=x.device) + self.rank * local  # (B,)
        mask = false_negative_mask(x_keys, y_keys, labels, self.world_size)
        hard = None
        if negatives is not None:
            hard = hard_negative_candidates(negatives, negative_keys, y_keys, self.world_size)
        loss, accuracy = _two_way(x, y, all_x, all_y, labels, logit_scale, mask, *(hard or ()))
        return {"loss": loss, "contrastive_loss": loss, "accuracy": accuracy}


class MatryoshkaLoss:
    """Wraps any contrastive loss: the weighted sum of the inner loss on re-normalised prefixes.

    The inner loss sees ``normalize(x[:, :d])`` for each size ``d``, with the same call signature,
    so it works around InfoNCE or any later loss. ``contrastive_loss`` and ``accuracy`` report the
    full-size vectors; ``loss@<d>`` each prefix (detached).
    """

    def __init__(self, inner: ContrastiveLoss, matryoshka: Matryoshka) -> None:
        self.inner = inner
        self.matryoshka = matryoshka

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        logit_scale: torch.Tensor,
        x_keys: torch.Tensor | None = None,
        y_keys: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        negative_keys: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        full_size = x.shape[1]
        if full_size in self.matryoshka.dims:
            full = self.inner(x, y, logit_scale, x_keys, y_keys, negatives, negative_keys)
        else:  # reported, not trained
            with torch.no_grad():
                full = self.inner(x, y, logit_scale, x_keys, y_keys, negatives, negative_keys)
        out = {"contrastive_loss": full["loss"], "accuracy": full["accuracy"]}
        objective = torch.zeros((), dtype=full["loss"].dtype, device=full["loss"].device)
        for dim, weight in zip(self.matryoshka.dims, self.matryoshka.weights, strict=True):
            if dim == full_size:
                prefix_loss = full["loss"]
            else:
                prefix = [None if t is None else F.normalize(t[:, :dim], dim=-1) for t in (x, y, negatives)]
                prefix_loss = self.inner(prefix[0], prefix[1], logit_scale, x_keys, y_keys, prefix[2], negative_keys)[
                    "loss"
                ]
            objective = objective + weight * prefix_loss
            out[f"loss@{dim}"] = prefix_loss.detach()
        out["loss"] = objective
        return out


def build_loss(rank: int, world_size: int, matryoshka: Matryoshka | None) -> ContrastiveLoss:
    """The training objective: InfoNCE, wrapped in Matryoshka when sizes are set."""
    loss = InfoNCE(rank, world_size)
    return loss if matryoshka is None else MatryoshkaLoss(loss, matryoshka)


def symmetric_info_nce(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: torch.Tensor,
    rank: int = 0,
    world_size: int = 1,
    matryoshka: Matryoshka | None = None,
    negatives: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """:class:`InfoNCE` (wrapped in :class:`MatryoshkaLoss` when ``matryoshka`` is given) as a function.

    Args:
        x: (B, D) L2-normalised embeddings of the first items of the local pairs.
        y: (B, D) L2-normalised embeddings of their positives.
        logit_scale: scalar ``exp(tau)``; logits are ``cos * logit_scale``.
        rank: this process's index.
        world_size: number of processes sharing negatives.
        matryoshka: prefix sizes and weights, or ``None`` for the plain loss.
        negatives: (M, D) L2-normalised hard negatives (candidates for x -> y only).
    """
    return build_loss(rank, world_size, matryoshka)(x, y, logit_scale, negatives=negatives)

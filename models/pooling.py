"""Pooling: the hidden states of a row's tokens -> one vector (last token, mean or position-weighted mean).

``last_token`` (cpt, E5-mistral, Qwen3-Embedding) takes the state at the closing delimiter;
``mean`` (LLM2Vec) averages every attended token, delimiters included; ``weighted_mean`` (SGPT,
GritLM) weights the ``i``-th real token of a row by ``i`` (1-based), so later tokens, which have
seen more of a causal row, count more. Every mode reads positions from the attention mask, so left
and right padding give the same vector; the mean modes match sentence-transformers' ``mean`` and
``weightedmean`` pooling on right-padded rows (its weights are the padded position + 1).

References:
    Muennighoff, "SGPT: GPT Sentence Embeddings for Semantic Search", arXiv:2202.08904.
    BehnamGhader et al., "LLM2Vec", arXiv:2404.05961.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("last_token", "mean", "weighted_mean")


def check_pooling(mode: str) -> str:
    """Return ``mode`` if it is a pooling mode, else raise a ``ValueError`` naming the valid ones."""
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
    return mode


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row, correct for left and right padding.

    Args:
        attention_mask: (B, T) with 1 for real tokens and 0 for padding.

    Returns:
        (B,) long tensor of positions.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * positions).argmax(dim=1)  # (B,)


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Gather ``hidden[b, last_attended(b)]`` for each row.

    Args:
        hidden: (B, T, H) last-layer hidden states.
        attention_mask: (B, T).

    Returns:
        (B, H).
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_positions(attention_mask)]


def token_weights(attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T) float32 weight of each token for the mean modes (0 on padding).

    ``mean``: 1 per real token; ``weighted_mean``: the token's 1-based rank among its row's real tokens.
    """
    mask = attention_mask.float()
    return mask * mask.cumsum(dim=1) if mode == "weighted_mean" else mask


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last_token") -> torch.Tensor:
    """(B, T, H) hidden states -> (B, H) pooled as ``mode`` says (see the module docstring).

    The mean modes sum in float32 whatever the hidden dtype (bf16 sums of many tokens lose digits).
    """
    if mode == "last_token":
        return pool_last_token(hidden, attention_mask)
    weights = token_weights(attention_mask, check_pooling(mode))  # (B, T)
    summed = torch.einsum("bth,bt->bh", hidden.float(), weights)  # (B, H)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions.

    Decoders derive positions from the sequence index, which left padding would shift.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

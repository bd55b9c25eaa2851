"""Last-token pooling: the hidden state at the closing delimiter, under either padding side."""

from __future__ import annotations

import torch


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


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row sees the same positions.

    Decoders derive positions from the sequence index, which left padding would shift.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)

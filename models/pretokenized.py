"""Delimiting inputs that arrive as token ids (the serving API accepts token arrays).

The string path lives in :func:`models.tokenization.encode_delimited`; this module builds the same
rows, ``open + body + close``, from body token ids, with the body cut to ``max_length - 2`` so the
closing delimiter (whose hidden state is the embedding) always survives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from models.sides import Side
from models.tokenization import PADDING_SIDES


def delimiter_ids(tokenizer: PreTrainedTokenizerBase, side: Side) -> tuple[int, int]:
    """The ``(open_id, close_id)`` pair of a side; ``ValueError`` when the tokenizer lacks them."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in (side.open_token, side.close_token) if token not in vocab]
    if missing:
        raise ValueError(f"side {side.name!r}: delimiters {missing} are not in the tokenizer")
    return vocab[side.open_token], vocab[side.close_token]


def delimit_ids(body: Sequence[int], open_id: int, close_id: int, max_length: int) -> list[int]:
    """``[open_id, *body[: max_length - 2], close_id]``."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (two delimiters and one token), got {max_length}")
    return [open_id, *body[: max_length - 2], close_id]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad delimited rows to the longest one.

    Returns:
        ``input_ids`` and ``attention_mask``, both (B, T) long tensors.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if not rows:
        raise ValueError("pad_rows needs at least one row")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id the string path uses: pad, else eos, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0

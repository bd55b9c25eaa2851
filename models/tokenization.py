"""Wrapping texts in a side's delimiters, truncating so the closing delimiter always survives.

Also builds the small byte-level tokenizer used with randomly initialised test backbones, so unit
tests never need downloaded files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from models.sides import Side

PADDING_SIDES = ("left", "right")


def encode_delimited(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    side: Side | Sequence[Side],
    max_length: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Tokenize ``open + text + close`` for each text and pad to the longest row.

    The text is cut to ``max_length - 2`` tokens before the delimiters are added, so truncation
    never removes the closing delimiter whose hidden state becomes the embedding.

    Args:
        side: one side for every text, or one side per text (both towers' inputs in one batch).

    Returns:
        ``input_ids`` and ``attention_mask``, both (B, T) long tensors.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (two delimiters and one token), got {max_length}")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    sides = [side] * len(texts) if isinstance(side, Side) else list(side)
    if len(sides) != len(texts):
        raise ValueError(f"got {len(sides)} sides for {len(texts)} texts")
    delimiters = {s.name: _delimiter_ids(tokenizer, s) for s in sides}
    body = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length - 2)["input_ids"]
    rows = []
    for ids, row_side in zip(body, sides, strict=True):
        open_id, close_id = delimiters[row_side.name]
        rows.append([open_id, *ids, close_id])
    width = max(len(row) for row in rows)
    pad_id = _pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(row)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _delimiter_ids(tokenizer: PreTrainedTokenizerBase, side: Side) -> tuple[int, int]:
    vocab = tokenizer.get_vocab()
    missing = [token for token in (side.open_token, side.close_token) if token not in vocab]
    if missing:
        raise ValueError(
            f"side {side.name!r}: delimiters {missing} are not in the tokenizer; was it built with this tower?"
        )
    return vocab[side.open_token], vocab[side.close_token]


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def byte_level_tokenizer() -> PreTrainedTokenizerBase:
    """A 256-symbol byte-level tokenizer built in code (no merges, no files), for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )

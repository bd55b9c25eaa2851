"""The one path from inputs to model rows: ``open + body[: max_length - 2] + close``, then padding.

Owns a side's delimiter ids, the pad id, the input normalisation, the body token ids of texts,
delimiting a body (cut to ``max_length - 2`` tokens so the closing delimiter, whose hidden state is
the embedding, always survives) and padding rows into tensors. Training (:meth:`DecoderEmbedder.tokenize`,
``train/data.py``), inference (:meth:`DecoderEmbedder.encode`, and through it the evaluation harness)
and the server (strings and token arrays alike) build their rows from these functions only, so one
text gives the same ids whichever way it comes in.

Input normalisation (:func:`normalize_text`, applied by :func:`body_ids` to every text):

- outer whitespace is stripped (Python's ``str.strip()``), as sentence-transformers <= 4 and
  infinity-emb do to every input: a text and the same text with a trailing newline get one vector
  on every stack. :data:`STRIP_NORMALIZER` is the same rule as a ``tokenizers`` normalizer, which
  an export writes into its ``tokenizer.json`` so stacks that do not strip themselves
  (sentence-transformers >= 5, TEI, vLLM, ``tokenizers.Tokenizer.from_file``) strip alike;
- special-token text in an input (``<|endoftext|>``, a side's delimiter spelled out) is plain text
  (``split_special_tokens``), as OpenAI's endpoint treats it: only the delimiters added here, by
  id, are special.

Also builds the small byte-level tokenizer used with randomly initialised test backbones, so unit
tests never need downloaded files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from models.sides import Side

PADDING_SIDES = ("left", "right")
# The characters Python's str.strip() removes (str.isspace): Unicode White_Space plus the information
# separators U+001C-U+001F, which Rust's char::is_whitespace (tokenizers' own Strip normalizer) keeps.
OUTER_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITESPACE_CLASS = "[" + "".join(f"\\x{{{ord(ch):x}}}" for ch in OUTER_WHITESPACE) + "]"
# normalize_text as a tokenizers normalizer (its JSON in a tokenizer.json): an Oniguruma regex anchored
# at the ends of the input (\A, \z; ^ and $ would also match at line breaks inside it).
STRIP_NORMALIZER = {
    "type": "Replace",
    "pattern": {"Regex": rf"\A{_WHITESPACE_CLASS}+|{_WHITESPACE_CLASS}+\z"},
    "content": "",
}
# Special-token text inside an input is tokenized as text (transformers' split_special_tokens).
SPLIT_SPECIAL_TOKENS = True
# The rules above as an export records them (export.json), for readers that build their own tokenization.
INPUT_NORMALIZATION = {
    "strip_outer_whitespace": "str.strip()",
    "special_token_text": "text" if SPLIT_SPECIAL_TOKENS else "special tokens",
}


def normalize_text(text: str) -> str:
    """What every text goes through before it is tokenized: its outer whitespace stripped."""
    return text.strip()


def body_limit(max_length: int) -> int:
    """Body tokens a row of ``max_length`` tokens holds: ``max_length - 2`` (the delimiters take two)."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (two delimiters and one token), got {max_length}")
    return max_length - 2


def delimiter_ids(tokenizer: PreTrainedTokenizerBase, side: Side) -> tuple[int, int]:
    """The ``(open_id, close_id)`` pair of a side; ``ValueError`` when the tokenizer lacks them.

    Looked up token by token, not through ``get_vocab()``: that builds the whole vocabulary as a dict
    (16 ms for SmolLM2's 49k tokens), which once per row cost more than the tokenization itself."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (side.open_token, side.close_token)}
    unknown = {None, tokenizer.unk_token_id}
    missing = [token for token, id_ in ids.items() if id_ in unknown and token != tokenizer.unk_token]
    if missing:
        raise ValueError(
            f"side {side.name!r}: delimiters {missing} are not in the tokenizer; was it built with this tower?"
        )
    return ids[side.open_token], ids[side.close_token]


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else its eos token, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def body_ids(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int | None = None,
    prompts: str | Sequence[str] = "",
) -> list[list[int]]:
    """Token ids of each text, its side's prompt before it, normalised (:func:`normalize_text`), without
    special tokens.

    The prompt (a side's task instruction, :meth:`models.sides.Side.prompt`) is joined to the text
    before normalising and tokenizing, as sentence-transformers joins its prompts, so the export's
    ``prompts`` give every stack the same ids; the prompt's tokens count against ``max_length``.

    Special-token text in a text is tokenized as text. The tokenizer's own truncation is not used:
    it would stay set on a fast tokenizer and be saved with it (a checkpoint's ``tokenizer.json``
    then cuts every input at the training length); the cut is a slice instead, the same ids.

    Args:
        max_length: the row length the bodies are for: each body keeps its first
            ``max_length - 2`` tokens, the cut :func:`delimit_ids` makes. ``None``: untruncated
            (the server checks request limits against the real length).
    """
    limit = None if max_length is None else body_limit(max_length)
    prompts = [prompts] * len(texts) if isinstance(prompts, str) else list(prompts)
    joined = [normalize_text(prompt + text) for prompt, text in zip(prompts, texts, strict=True)]
    encoded = tokenizer(joined, add_special_tokens=False, split_special_tokens=SPLIT_SPECIAL_TOKENS)
    return [list(ids[:limit]) for ids in encoded["input_ids"]]


def delimit_ids(body: Sequence[int], open_id: int, close_id: int, max_length: int) -> list[int]:
    """``[open_id, *body[: max_length - 2], close_id]``: a row of at most ``max_length`` ids."""
    return [open_id, *body[: body_limit(max_length)], close_id]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad delimited rows to the longest one, on the right or on the left.

    Returns:
        ``input_ids`` and ``attention_mask``, both (B, T) long tensors.
    """
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
    if not rows:
        raise ValueError("pad_rows needs at least one row")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        input_ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def encode_delimited(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    side: Side | Sequence[Side],
    max_length: int,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Tokenize ``open + prompt + text + close`` for each text and pad to the longest row.

    :func:`body_ids`, then :func:`delimit_ids` per row, then :func:`pad_rows`: the text is cut to
    ``max_length - 2`` tokens before the delimiters are added, so truncation never removes the
    closing delimiter whose hidden state becomes the embedding.

    Args:
        side: one side for every text, or one side per text (both towers' inputs in one batch).

    Returns:
        ``input_ids`` and ``attention_mask``, both (B, T) long tensors.
    """
    sides = [side] * len(texts) if isinstance(side, Side) else list(side)
    if len(sides) != len(texts):
        raise ValueError(f"got {len(sides)} sides for {len(texts)} texts")
    delimiters = {s.name: delimiter_ids(tokenizer, s) for s in {s.name: s for s in sides}.values()}
    prompts = {s.name: s.prompt() for s in sides}
    bodies = body_ids(tokenizer, texts, max_length, [prompts[s.name] for s in sides])
    rows = [delimit_ids(body, *delimiters[s.name], max_length) for body, s in zip(bodies, sides, strict=True)]
    return pad_rows(rows, pad_id_of(tokenizer), padding_side)


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

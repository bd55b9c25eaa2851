"""A request's ``input`` as body token ids, checked against the limits of :mod:`serve.schemas` at the least cost.

Characters are checked before anything is tokenized: a text longer than its token limit times the
most characters one token of the model covers cannot fit. Texts are then tokenized in chunks
bounded in texts and characters (:meth:`serve.engine.EmbeddingEngine.tokenize`), and tokenizing
stops at the first chunk that puts one input over its token limit or the request over its own, so
a request over its limits costs the work of reaching the limit, not of its whole body.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Sequence

from serve.engine import EmbeddingEngine
from serve.errors import OpenAIError
from serve.schemas import MAX_ITEMS, MAX_TOKENS_PER_ITEM, MAX_TOKENS_PER_REQUEST

logger = logging.getLogger(__name__)
# After tokenizing a request this large, free heap pages back to the system: a tokenizer's many small
# allocations otherwise leave the process hundreds of MB larger after a burst of large requests.
TRIM_AFTER_CHARS = 1_000_000
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if ctypes.util.find_library("c") else None


def release_heap() -> None:
    """``malloc_trim(0)`` where the C library has it (glibc); nothing elsewhere."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def tokenize_within_limits(served: EmbeddingEngine, texts: list[str], side: str | None = None) -> list[list[int]]:
    """:meth:`EmbeddingEngine.tokenize` stopping at the limits; the heap trimmed after a large request."""
    try:
        return served.tokenize(texts, MAX_TOKENS_PER_REQUEST, MAX_TOKENS_PER_ITEM, side=side)
    finally:
        if sum(map(len, texts)) > TRIM_AFTER_CHARS:
            release_heap()


def check_characters(texts: Sequence[str], max_chars_per_token: int) -> None:
    """Refuse, before tokenizing, an input or a request whose characters could not fit in the token limits."""
    total = 0
    for i, text in enumerate(texts):
        if not text:
            raise OpenAIError(400, f"input[{i}] is an empty string", param="input", code="empty_input")
        if len(text) > MAX_TOKENS_PER_ITEM * max_chars_per_token:
            raise OpenAIError(
                400,
                f"input[{i}] has {len(text)} characters: more than {MAX_TOKENS_PER_ITEM} tokens, the most allowed "
                f"per input (no token of this model covers more than {max_chars_per_token} characters)",
                param="input",
                code="context_length_exceeded",
            )
        total += len(text)
    if total > MAX_TOKENS_PER_REQUEST * max_chars_per_token:
        raise OpenAIError(
            400,
            f"the request has {total} characters: more than {MAX_TOKENS_PER_REQUEST} tokens, the most allowed per "
            "request",
            param="input",
            code="max_tokens_per_request",
        )


def check_token_ids(bodies: Sequence[Sequence[int]], vocab_size: int) -> None:
    for i, ids in enumerate(bodies):
        if not ids:
            raise OpenAIError(400, f"input[{i}] is an empty token array", param="input", code="empty_input")
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise OpenAIError(
                400,
                f"input[{i}] holds token id {bad}; ids must be in [0, {vocab_size})",
                param="input",
                code="invalid_token_id",
            )


def check_token_counts(bodies: Sequence[Sequence[int]], inputs: int) -> None:
    """Refuse an input over :data:`MAX_TOKENS_PER_ITEM` or a request over :data:`MAX_TOKENS_PER_REQUEST`;
    ``bodies`` may be the first of ``inputs`` only (tokenizing stopped at a limit)."""
    total = 0
    for i, ids in enumerate(bodies):
        if len(ids) > MAX_TOKENS_PER_ITEM:
            raise OpenAIError(
                400,
                f"input[{i}] has {len(ids)} tokens; at most {MAX_TOKENS_PER_ITEM} are allowed per input",
                param="input",
                code="context_length_exceeded",
            )
        total += len(ids)
    if total > MAX_TOKENS_PER_REQUEST:
        counted = "" if len(bodies) == inputs else f"at least (counted in its first {len(bodies)} inputs) "
        raise OpenAIError(
            400,
            f"the request has {counted}{total} tokens; at most {MAX_TOKENS_PER_REQUEST} are allowed per request",
            param="input",
            code="max_tokens_per_request",
        )


async def token_bodies(value: str | list, served: EmbeddingEngine, side: str | None = None) -> list[list[int]]:
    """The request's inputs as body token ids, checked against the limits in :mod:`serve.schemas`; texts get
    ``side``'s task instruction before them, token arrays are the model's exact input."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise OpenAIError(400, "input must not be empty", param="input", code="empty_input")
    if isinstance(value[0], int):  # one token array
        value = [value]
    if len(value) > MAX_ITEMS:
        raise OpenAIError(
            400, f"input has {len(value)} items; at most {MAX_ITEMS} are allowed", param="input", code="too_many_items"
        )
    if isinstance(value[0], str):
        check_characters(value, served.max_chars_per_token)
        try:
            bodies = await asyncio.to_thread(tokenize_within_limits, served, value, side)
        except (TypeError, ValueError) as exc:  # a fast tokenizer's TypeError, a slow one's UnicodeError
            logger.warning("the tokenizer refused a request's input: %s", str(exc)[:200])
            raise OpenAIError(
                400, "the tokenizer cannot take this input; send valid Unicode text", param="input", code="invalid_text"
            ) from None
    else:
        bodies = value
        check_token_ids(bodies, served.vocab_size)
    check_token_counts(bodies, len(value))
    return bodies

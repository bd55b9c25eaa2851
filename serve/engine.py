"""The model behind the server: model names to tower sides, tokenisation, and batched forward passes.

Model names: ``NAME-<side>`` for every side of the tower (``NAME-query``, ``NAME-doc``,
``NAME-text``, ``NAME-code``), and plain ``NAME`` when the tower has a single side (the
text-similarity tower). Rows are ``(side, delimited token ids)``; a batch may mix sides.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import DecoderEmbedder
from models.packing import tight_capacity
from models.precision import cast_autocast_weights, check_precision, inference_autocast
from models.tokenization import body_ids, delimit_ids, delimiter_ids, pad_id_of, pad_rows


@dataclass(frozen=True)
class Row:
    """One input as the model runs it: its side and ``open + body + close`` token ids."""

    side: str
    ids: tuple[int, ...]


class EmbeddingEngine:
    """Wraps a :class:`DecoderEmbedder` for serving.

    Args:
        model: the embedder, moved to ``device`` and put in eval mode here.
        name: the served model name (``NAME``).
        max_length: longest row the model runs, delimiters included; longer bodies are cut to
            ``max_length - 2`` tokens, as :meth:`DecoderEmbedder.encode` does.
        precision: ``fp32``, or ``bf16`` (``torch.autocast``: faster on GPUs and AVX512-BF16 CPUs;
            the same setting as the evaluation harness's ``source.precision``). With ``bf16`` the
            torch model's Linear weights are cast here, once (:func:`models.precision.cast_autocast_weights`).

    ``pack_tokens`` (torch backend): when set, :meth:`run` makes one padding-free forward call
    per micro-batch, the rows packed end to end into sequences of at most that many tokens, each
    row attending only to itself (:mod:`models.packing`, as training's ``trainer.packing``).
    Otherwise rows run in length chunks: ``call_overhead_tokens`` (default 0) is the fixed cost of
    one forward call expressed in padded tokens; :meth:`run` pays that much padding to save a call
    (see :func:`length_chunks`), and :meth:`measure_call_overhead` sets it from timed calls.
    """

    call_overhead_tokens: float = 0.0
    pack_tokens: int | None = None

    def __init__(
        self, model: DecoderEmbedder, name: str, max_length: int = 512, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3, got {max_length}")
        check_precision(precision)
        self.precision = precision
        self.model = model.to(device).eval()
        if isinstance(model, DecoderEmbedder):
            cast_autocast_weights(self.model, precision)  # the engine owns its model and runs it under autocast only
        self.device = torch.device(device)
        self.name = name
        self.max_length = max_length
        self.tokenizer = model.tokenizer
        self.vocab_size = len(self.tokenizer)
        self.embedding_dim = model.embedding_dim
        self.matryoshka_dims = model.matryoshka_dims  # sizes the model was trained for (None: full only)
        self._delimiters = {side: delimiter_ids(self.tokenizer, model.sides[side]) for side in model.side_names}
        # each side's task instruction, put before its text inputs (token arrays are taken as the exact input)
        self.prompts = {side: model.sides[side].prompt() for side in model.side_names}
        self._pad_id = pad_id_of(self.tokenizer)
        # A fast tokenizer's Rust state is borrowed mutably on every call, so two threads may not share
        # one ("Already borrowed"); each thread tokenizes with its own copy instead of waiting on a lock.
        self._thread_tokenizers = threading.local()
        self.max_chars_per_token = max_chars_per_token(self.tokenizer)
        self.model_names: dict[str, str] = {f"{name}-{side}": side for side in model.side_names}
        if len(model.side_names) == 1:
            self.model_names[name] = model.side_names[0]

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        name: str | None = None,
        max_length: int = 512,
        device: str = "cpu",
        precision: str = "fp32",
        backend: str = "torch",
        threads: int | None = None,
    ) -> EmbeddingEngine:
        """Load a checkpoint, a training run folder (newest checkpoint) or an export folder.

        ``backend="onnx"`` (or ``"onnx-int8"``) runs the export folder's ONNX graphs with
        onnxruntime (``threads`` intra-op threads) instead of the torch weights.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        name = name or Path(folder).resolve().name
        if backend == "torch":
            return cls(DecoderEmbedder.from_pretrained(folder), name, max_length, device, precision)
        if precision != "fp32":
            raise ValueError(f"the {backend} backend runs the graph's own precision; precision must be fp32")
        from serve.onnx_export import OnnxTower

        tower = OnnxTower(folder, int8=backend == "onnx-int8", threads=threads)
        return cls(tower, name, max_length, device, precision)  # type: ignore[arg-type]

    @property
    def supports_packing(self) -> bool:
        """Whether the model runs packed rows (our torch embedder; the ONNX graphs take padded rows)."""
        return isinstance(self.model, DecoderEmbedder)

    def side_of(self, model_name: str) -> str | None:
        return self.model_names.get(model_name)

    def tokenize(
        self,
        texts: Sequence[str],
        stop_after_tokens: int | None = None,
        stop_after_item_tokens: int | None = None,
        side: str | None = None,
    ) -> list[list[int]]:
        """Body token ids of each text (``side``'s task instruction before it), untruncated (so request
        limits see the real length).

        Texts are tokenized in chunks of at most :data:`TOKENIZE_CHUNK` texts and
        :data:`TOKENIZE_CHUNK_CHARS` characters (a longer text is a chunk of its own). No further chunk
        is tokenized once the ids so far exceed ``stop_after_tokens``, or one text's exceed
        ``stop_after_item_tokens`` (the request is over its limit anyway), so the bodies returned may
        be fewer than the texts: the work spent on a request over its limits is at most what reaching
        the limit took plus one chunk, not the whole body.
        """
        tokenizer = getattr(self._thread_tokenizers, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._thread_tokenizers.tokenizer = copy.deepcopy(self.tokenizer)
        bodies: list[list[int]] = []
        total = 0
        for chunk in character_chunks(texts, TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS):
            ids = body_ids(tokenizer, chunk, prompts=self.prompts.get(side, "") if side is not None else "")
            bodies += ids
            total += sum(len(body) for body in ids)
            if stop_after_tokens is not None and total > stop_after_tokens:
                break
            if stop_after_item_tokens is not None and any(len(body) > stop_after_item_tokens for body in ids):
                break
        return bodies

    def row(self, side: str, body: Sequence[int]) -> Row:
        open_id, close_id = self._delimiters[side]
        return Row(side, tuple(delimit_ids(body, open_id, close_id, self.max_length)))

    @torch.inference_mode()
    def run(self, rows: list[Row]) -> list[torch.Tensor]:
        """Embed a batch of rows; returns one (D,) float32 CPU tensor per row, in row order.

        With ``pack_tokens`` the rows run packed in one call; otherwise they are sorted by length
        and run in chunks of similar length (see :func:`length_chunks`), so a micro-batch of mixed
        lengths does not pay for padding every row to the longest.
        """
        out: list[torch.Tensor | None] = [None] * len(rows)
        lengths = [len(row.ids) for row in rows]
        if self.pack_tokens is not None:
            chunks, packing = [list(range(len(rows)))], {"pack_tokens": tight_capacity(lengths, self.pack_tokens)}
        else:
            chunks, packing = length_chunks(lengths, PADDING_SLACK, self.call_overhead_tokens), {}
        for chunk in chunks:
            batch = pad_rows([rows[i].ids for i in chunk], self._pad_id, self.model.padding_side)
            with self._autocast():
                embeddings = self.model(
                    batch["input_ids"].to(self.device),
                    batch["attention_mask"].to(self.device),
                    [rows[i].side for i in chunk],
                    **packing,
                )  # (B, D)
            for i, vector in zip(chunk, embeddings.float().cpu().unbind(0), strict=True):
                out[i] = vector
        assert all(vector is not None for vector in out)
        return out  # type: ignore[return-value]

    def measure_call_overhead(self, repeats: int = 3) -> float:
        """Time one 16-token row and 8 such rows; set and return the per-call cost in tokens.

        A forward call costs about ``a + b x padded tokens``; ``a / b`` is what one call saves in
        tokens. On a CPU with bf16 autocast ``a`` is large (many small kernels per layer), so
        small micro-batches run faster as one padded chunk than as several tight ones.
        """
        side = self.model.side_names[0]
        open_id, close_id = self._delimiters[side]
        row = Row(side, (open_id, *([self._pad_id] * 14), close_id))

        def seconds(count: int) -> float:
            times = []
            for _ in range(repeats + 1):  # the first call warms up
                started = time.perf_counter()
                self.run([row] * count)
                times.append(time.perf_counter() - started)
            return statistics.median(times[1:])

        one, eight = seconds(1), seconds(8)
        per_token = max(eight - one, 1e-9) / (7 * len(row.ids))
        self.call_overhead_tokens = round(max(one - per_token * len(row.ids), 0.0) / per_token, 1)
        return self.call_overhead_tokens

    def _autocast(self) -> AbstractContextManager:
        return inference_autocast(self.precision, self.device)


PADDING_SLACK = 1.25
BACKENDS = ("torch", "onnx", "onnx-int8")
TOKENIZE_CHUNK = 64  # texts per tokenizer call: the granularity of stopping a request that is over its limit
# ... and characters per call: SmolLM2's tokenizer takes ~1 s per 660k characters on this CPU, prose or digits alike
TOKENIZE_CHUNK_CHARS = 65_536


def character_chunks(texts: Sequence[str], max_texts: int, max_chars: int) -> list[Sequence[str]]:
    """Consecutive runs of ``texts``, each at most ``max_texts`` texts and ``max_chars`` characters (or one text)."""
    chunks: list[Sequence[str]] = []
    start = chars = 0
    for end, text in enumerate(texts):
        if end > start and (end - start >= max_texts or chars + len(text) > max_chars):
            chunks.append(texts[start:end])
            start, chars = end, 0
        chars += len(text)
    if start < len(texts):
        chunks.append(texts[start:])
    return chunks


def max_chars_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters of input one token can stand for.

    The longest decoded vocabulary entry; times 4 when the tokenizer normalises its input first
    (NFC, for one, can fold two characters into one before they are matched). A text longer than
    ``limit x`` this has more than ``limit`` tokens, whatever they are, so it can be refused
    before it is tokenized.
    """
    vocabulary = tokenizer.get_vocab()
    longest = max(len(tokenizer.convert_tokens_to_string([token])) for token in vocabulary)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    normalizes = backend is None or backend.normalizer is not None
    return max(1, longest) * (4 if normalizes else 1)


def length_chunks(
    lengths: Sequence[int], slack: float = PADDING_SLACK, call_overhead_tokens: float = 0.0
) -> list[list[int]]:
    """Group row indices, shortest first, so each group's padded size is at most ``slack`` x its real tokens
    plus ``call_overhead_tokens`` (what one more forward call costs, in tokens; 0: padding alone decides).

    Returns:
        index lists covering ``range(len(lengths))`` once each.
    """
    chunks: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        width = lengths[i]  # ascending: the newest row is the longest of its chunk
        if current and width * (len(current) + 1) > slack * (real + width) + call_overhead_tokens:
            chunks.append(current)
            current, real = [], 0
        current.append(i)
        real += width
    if current:
        chunks.append(current)
    return chunks

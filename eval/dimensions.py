"""Scores at several embedding sizes in one run: prefixes of the full vectors, re-normalised.

``python eval/run.py ... dimensions=[64,128,256,null]`` runs the benchmark once per size; the
full embeddings are encoded once and memoised, and each size reads the first ``d`` coordinates
of them, re-normalised (what the server's ``dimensions`` and Matryoshka training use). Score
keys of a prefix size carry ``@<d>`` (``sts/STSBenchmark/spearman@64``); the full size keeps the
plain key, so references apply to it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.report import Score


def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` columns, each row re-normalised; ``None`` or the full size: unchanged."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    if not 1 <= dimensions <= vectors.shape[1]:
        raise ValueError(f"dimensions={dimensions} outside 1..{vectors.shape[1]} (the model's embedding size)")
    prefix = vectors[:, :dimensions]
    return prefix / np.maximum(np.linalg.norm(prefix, axis=1, keepdims=True), 1e-12)


class MemoisedEncoder:
    """Remembers each (texts, role, dataset, task) encode of an encoder in memory, for re-use across sizes."""

    def __init__(self, inner: Any, memo: dict | None = None, task: str | None = None) -> None:
        self.inner = inner
        self.task = task
        self._memo: dict[tuple, np.ndarray] = {} if memo is None else memo

    def for_task(self, task: str | None) -> MemoisedEncoder:
        inner = self.inner.for_task(task)
        return self if inner is self.inner else MemoisedEncoder(inner, self._memo, task)

    def encode(self, texts: Sequence[str], role: str, dataset: str) -> np.ndarray:
        key = (role, dataset, self.task, len(texts), hash(tuple(texts)))
        if key not in self._memo:
            self._memo[key] = self.inner.encode(texts, role, dataset)
        return self._memo[key]

    def encode_corpus(self, corpus: Any, role: str, dataset: str, **options: Any) -> Any:
        key = (role, dataset, self.task, len(corpus), corpus.digest)
        if key not in self._memo:
            self._memo[key] = self.inner.encode_corpus(corpus, role, dataset, **options)
        return self._memo[key]

    @property
    def embedding_size(self) -> int | None:
        """The full vectors' size, once something was encoded."""
        return next((v.shape[1] for v in self._memo.values()), None)


class PrefixEncoder:
    """An encoder whose vectors are the re-normalised ``dimensions``-prefix of another's."""

    def __init__(self, inner: Any, dimensions: int | None) -> None:
        self.inner = inner
        self.dimensions = dimensions

    def for_task(self, task: str | None) -> PrefixEncoder:
        return PrefixEncoder(self.inner.for_task(task), self.dimensions)

    def encode(self, texts: Sequence[str], role: str, dataset: str) -> np.ndarray:
        return truncate(self.inner.encode(texts, role, dataset), self.dimensions)

    def encode_corpus(self, corpus: Any, role: str, dataset: str, **options: Any) -> Any:
        return PrefixRows(self.inner.encode_corpus(corpus, role, dataset, **options), self.dimensions)


class PrefixRows:
    """Row blocks of an on-disk matrix, truncated to a prefix size and re-normalised as they are read."""

    def __init__(self, inner: Any, dimensions: int | None) -> None:
        self.inner = inner
        self.dimensions = dimensions
        self.shape = (len(inner), dimensions or inner.shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return truncate(np.asarray(self.inner[rows], dtype=np.float32), self.dimensions)


def check_sizes(sizes: Sequence[int | None] | None) -> list[int | None]:
    """The configured ``dimensions`` list (``None`` entries mean the full size); null: full only."""
    if sizes is None:
        return [None]
    sizes = list(sizes)
    if not sizes:
        raise ValueError("dimensions must be null or a non-empty list of sizes (null inside = the full size)")
    bad = [s for s in sizes if s is not None and (not isinstance(s, int) or s < 1)]
    if bad:
        raise ValueError(f"dimensions {bad} must be integers >= 1 (or null for the full size)")
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"dimensions {sizes} has repeated sizes")
    return sizes


def key_at(key: str, dimensions: int | None) -> str:
    return key if dimensions is None else f"{key}@{dimensions}"


def scores_at(scores: Sequence[Score], dimensions: int | None) -> list[Score]:
    """The benchmark's scores, keyed for ``dimensions``; only the full size keeps ``main``."""
    return [Score(key_at(s.key, dimensions), s.value, s.main and dimensions is None) for s in scores]


def size_table(scores: Sequence[Score], sizes: Sequence[int | None], full_size: int | None) -> str:
    """Markdown: one row per score, one column per size (``full`` labelled with its size if known)."""
    by_key = {s.key: s.value for s in scores}
    base_keys = [s.key for s in scores if "@" not in s.key.rsplit("/", 1)[-1]]
    ordered = sorted(sizes, key=lambda s: float("inf") if s is None else s)
    labels = [f"full ({full_size})" if s is None and full_size else "full" if s is None else str(s) for s in ordered]
    lines = ["| score | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(ordered)]
    for key in base_keys:
        cells = [by_key.get(key_at(key, s)) for s in ordered]
        lines.append(f"| {key} | " + " | ".join("–" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)

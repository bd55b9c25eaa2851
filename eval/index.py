"""Approximate (and exact) dense retrieval with faiss: ``benchmark.index=flat|hnsw|ivf``.

``exact`` (the default) is :func:`eval.search.exact_search`, which reads the document matrix from
disk block by block. The faiss indexes are built by adding the matrix a block at a time, but they
hold every vector in memory (faiss's own layout), so they trade RSS for speed:

* ``flat``: ``IndexFlatIP``, exhaustive inner product: equals exact search (up to float rounding);
* ``hnsw``: ``IndexHNSWFlat`` (``hnsw_m`` links, ``ef_construction``, ``ef_search``);
* ``ivf``: ``IndexIVFFlat`` over ``nlist`` k-means cells (default ``4 * sqrt(N)``), trained on a
  sample of ``train_size`` rows, searching ``nprobe`` cells.

Every approximate run is also searched exactly, and ``recall_at_k`` (the share of the exact top-k
the index found) is reported beside the benchmark's scores, so a speed-up never hides a loss.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INDEX_TYPES = ("exact", "flat", "hnsw", "ivf")


@dataclass
class IndexOptions:
    """faiss settings; only the chosen index's keys are read."""

    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 256
    nlist: int | None = None
    nprobe: int = 32
    train_size: int = 100_000
    add_chunk: int = 65_536
    seed: int = 0


def check_index_type(kind: str) -> None:
    """Refuse an index type we do not build, or a faiss one when faiss is not installed (naming the fix)."""
    if kind not in INDEX_TYPES:
        raise ValueError(f"benchmark.index={kind!r} is not one of {INDEX_TYPES}")
    if kind != "exact":
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise ImportError(
                f"benchmark.index={kind} needs faiss: pip install faiss-cpu (or faiss-gpu); "
                "benchmark.index=exact needs nothing"
            ) from None


def build_index(kind: str, vectors: Any, options: IndexOptions) -> Any:
    """A faiss index of type ``kind`` over ``vectors`` ((N, D), read in ``add_chunk`` row blocks)."""
    import faiss

    check_index_type(kind)
    count, width = len(vectors), vectors.shape[1]
    started = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(width)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(width, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        index.hnsw.efSearch = options.ef_search
    else:
        nlist = options.nlist or max(1, min(count // 39, int(4 * np.sqrt(count))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(options.seed).choice(count, min(count, options.train_size), False))
        index.train(_sampled_rows(vectors, sample, options.add_chunk))
        index.nprobe = min(options.nprobe, nlist)
    for start in range(0, count, options.add_chunk):
        index.add(np.ascontiguousarray(vectors[start : start + options.add_chunk], dtype=np.float32))
    logger.info("faiss %s index over %d vectors built in %.1fs", kind, count, time.perf_counter() - started)
    return index


def _sampled_rows(vectors: Any, sample: np.ndarray, block: int) -> np.ndarray:
    """The rows ``sample`` (sorted) of ``vectors``, read a block at a time (one read per block, not per row)."""
    parts = []
    for start in range(0, len(vectors), block):
        inside = sample[(sample >= start) & (sample < start + block)]
        if inside.size:
            parts.append(np.asarray(vectors[start : start + block], dtype=np.float32)[inside - start])
    return np.ascontiguousarray(np.concatenate(parts))


def index_search(
    index: Any,
    query_vectors: np.ndarray,
    query_ids: list[str],
    doc_ids: list[str],
    top_k: int,
    exclude: np.ndarray | None,
) -> dict[str, dict[str, float]]:
    """The index's top-k per query (a query's own document, ``exclude``, dropped after the search)."""
    depth = min(top_k + (1 if exclude is not None else 0), len(doc_ids))
    scores, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), depth)
    run: dict[str, dict[str, float]] = {}
    for number, query_id in enumerate(query_ids):
        own = -2 if exclude is None else int(exclude[number])
        hits = [(int(row), float(score)) for row, score in zip(rows[number], scores[number], strict=True)
                if row >= 0 and row != own]  # fmt: skip
        run[query_id] = {doc_ids[row]: score for row, score in hits[:top_k]}
    return run


def recall_against(approximate: dict[str, dict[str, float]], exact: dict[str, dict[str, float]], k: int) -> float:
    """Mean share of each query's exact top-``k`` documents that the approximate run also returned."""
    shares = []
    for query_id, hits in exact.items():
        truth = sorted(hits, key=hits.get, reverse=True)[:k]
        if truth:
            found = approximate.get(query_id, {})
            shares.append(len(set(sorted(found, key=found.get, reverse=True)[:k]).intersection(truth)) / len(truth))
    return float(np.mean(shares)) if shares else float("nan")

"""Dense retrieval over L2-normalised embeddings: exact chunked top-k, or a faiss index (``eval.index``).

:func:`exact_search` never needs the document matrix in memory: it reads it in row blocks (a
memory map from :meth:`eval.cache.Encoder.encode_corpus` works as well as an array) and keeps a
running top-k per query (:func:`top_candidates`, also the search of hard-negative mining,
:mod:`eval.mining`). With several processes each scores a share of the queries and the hit lists
are gathered, so every process returns the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.distributed import Shards

Run = dict[str, dict[str, float]]  # query id -> {doc id: score}


def own_rows(query_ids: Sequence[str], doc_rows: dict[str, int] | Sequence[str]) -> np.ndarray:
    """(Q,) the document row whose id equals each query id (BEIR's identical-id rule), -1 where none."""
    rows = doc_rows if isinstance(doc_rows, dict) else {d: i for i, d in enumerate(doc_rows)}
    return np.array([rows.get(query_id, -1) for query_id in query_ids], dtype=np.int64)


def exact_search(
    query_vectors: np.ndarray,
    doc_vectors: Any,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    top_k: int,
    ignore_identical_ids: bool = True,
    chunk_size: int = 1024,
    show_progress: bool = False,
    doc_chunk: int = 16_384,
    doc_rows: dict[str, int] | None = None,
    shards: Shards | None = None,
) -> Run:
    """Top-k documents per query by dot product (cosine for normalised vectors), exactly.

    Args:
        query_vectors: (Q, D) query embeddings.
        doc_vectors: (N, D) document embeddings: an array, a memory map or an ``eval.cache.RowStack``.
        query_ids: Q ids, aligned with ``query_vectors``.
        doc_ids: N ids, aligned with ``doc_vectors``.
        top_k: hits kept per query.
        ignore_identical_ids: drop a document whose id equals the query id (BEIR's rule: ArguAna and
            Quora queries are corpus documents themselves). The document is masked before top-k, so
            each query still gets ``top_k`` other hits.
        chunk_size: queries scored together; with ``doc_chunk``, memory is about chunk_size x doc_chunk
            floats.
        show_progress: show a progress bar over query chunks.
        doc_chunk: document rows read and scored per block.
        doc_rows: doc id -> row for (at least) the query ids, when ``doc_ids`` is too long to index whole.
        shards: split the queries across processes (each gets every hit list back).

    Returns:
        query id -> {doc id: score} with at most ``top_k`` entries.
    """
    from tqdm.auto import tqdm

    shards = shards or Shards()
    if query_vectors.shape[0] != len(query_ids) or len(doc_vectors) != len(doc_ids):
        raise ValueError("vectors and ids are not aligned")
    k = min(top_k, len(doc_ids) - (1 if ignore_identical_ids else 0))
    exclude = own_rows(query_ids, doc_rows if doc_rows is not None else doc_ids) if ignore_identical_ids else None
    first, last = shards.span(len(query_ids))
    results: Run = {}
    starts = range(first, last, chunk_size)
    for start in tqdm(starts, desc="search", disable=not show_progress or not shards.is_main):
        end = min(start + chunk_size, last)
        scores, rows = top_candidates(query_vectors[start:end], doc_vectors, k, doc_chunk,
                                      None if exclude is None else exclude[start:end])  # fmt: skip
        for offset, query_id in enumerate(query_ids[start:end]):
            results[query_id] = {doc_ids[row]: float(value) for value, row in
                                 zip(scores[offset].tolist(), rows[offset].tolist(), strict=True)}  # fmt: skip
    if shards.world > 1:
        results = {query_id: hits for part in shards.gather(results) for query_id, hits in part.items()}
        results = {query_id: results[query_id] for query_id in query_ids}  # the order of one process
    return results


def top_candidates(
    queries: np.ndarray,
    pool: np.ndarray,
    depth: int,
    pool_chunk: int,
    exclude: np.ndarray | None = None,
    pool_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``depth`` pool rows per query by inner product: (scores, indices), best first.

    Args:
        queries: (Q, D) query vectors.
        pool: (N, D) candidates, any array that slices into row blocks (a memory map, a stack of them).
        depth: hits kept per query (at most N).
        pool_chunk: pool rows scored per block: memory is about Q x pool_chunk floats.
        exclude: (Q,) a pool row per query that must not be returned (its own document), -1 for none.
        pool_offset: added to the returned indices (the pool is a slice of a larger one).
    """
    import torch

    q = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    own = None if exclude is None else torch.from_numpy(np.asarray(exclude, dtype=np.int64))
    best_scores = torch.full((len(q), 0), float("-inf"))
    best_index = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(pool), pool_chunk):
        block = torch.from_numpy(np.asarray(pool[start : start + pool_chunk], dtype=np.float32))
        block_scores = q @ block.T  # (Q, chunk): the only matrix that grows with pool_chunk
        if own is not None:
            rows = torch.nonzero((own >= start) & (own < start + len(block))).flatten()
            block_scores[rows, own[rows] - start] = float("-inf")
        # the block's own top-k first, then merged with the running top-k: (Q, 2k), never (Q, k + chunk)
        top_scores, top_where = block_scores.topk(min(depth, block_scores.shape[1]), dim=1)
        scores = torch.cat([best_scores, top_scores], dim=1)
        index = torch.cat([best_index, top_where + start], dim=1)
        best_scores, where = scores.topk(min(depth, scores.shape[1]), dim=1)
        best_index = index.gather(1, where)
        del block_scores
    return best_scores.numpy(), best_index.numpy() + pool_offset

"""Exact dense retrieval: chunked inner-product top-k over L2-normalised embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def exact_search(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    top_k: int,
    ignore_identical_ids: bool = True,
    chunk_size: int = 1024,
    show_progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Top-k documents per query by dot product (cosine for normalised vectors), exactly.

    Args:
        query_vectors: (Q, D) query embeddings.
        doc_vectors: (N, D) document embeddings.
        query_ids: Q ids, aligned with ``query_vectors``.
        doc_ids: N ids, aligned with ``doc_vectors``.
        top_k: hits kept per query.
        ignore_identical_ids: drop a document whose id equals the query id (BEIR's rule: ArguAna and
            Quora queries are corpus documents themselves). The document is masked before top-k, so
            each query still gets ``top_k`` other hits.
        chunk_size: queries scored per matmul, bounding memory at chunk_size x N floats.
        show_progress: show a progress bar over chunks.

    Returns:
        query id -> {doc id: score} with at most ``top_k`` entries.
    """
    import torch
    from tqdm.auto import tqdm

    if query_vectors.shape[0] != len(query_ids) or doc_vectors.shape[0] != len(doc_ids):
        raise ValueError("vectors and ids are not aligned")
    docs = torch.from_numpy(np.ascontiguousarray(doc_vectors, dtype=np.float32))  # (N, D)
    doc_index = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    k = min(top_k, len(doc_ids) - (1 if ignore_identical_ids else 0))
    results: dict[str, dict[str, float]] = {}
    starts = range(0, len(query_ids), chunk_size)
    for start in tqdm(starts, desc="search", disable=not show_progress):
        ids = query_ids[start : start + chunk_size]
        queries = torch.from_numpy(np.ascontiguousarray(query_vectors[start : start + len(ids)], dtype=np.float32))
        scores = queries @ docs.T  # (C, N)
        if ignore_identical_ids:
            for row, query_id in enumerate(ids):
                column = doc_index.get(query_id)
                if column is not None:
                    scores[row, column] = float("-inf")
        values, indices = torch.topk(scores, k=k, dim=1)  # (C, k)
        for row, query_id in enumerate(ids):
            results[query_id] = {
                doc_ids[column]: float(value)
                for value, column in zip(values[row].tolist(), indices[row].tolist(), strict=True)
            }
    return results

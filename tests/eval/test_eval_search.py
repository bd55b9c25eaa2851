"""Exact dense search: agreement with brute force, and BEIR's ignore-identical-ids rule."""

from __future__ import annotations

import numpy as np
import pytest

from eval.search import exact_search


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_chunked_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    docs, queries = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(7, 8)))
    doc_ids = [f"d{i}" for i in range(50)]
    query_ids = [f"q{i}" for i in range(7)]
    run = exact_search(queries, docs, query_ids, doc_ids, top_k=5, ignore_identical_ids=False, chunk_size=3)
    scores = queries @ docs.T
    for row, query_id in enumerate(query_ids):
        expected = [doc_ids[i] for i in np.argsort(-scores[row])[:5]]
        assert list(run[query_id]) == expected
        assert run[query_id][expected[0]] == pytest.approx(float(scores[row].max()), abs=1e-6)


def test_identical_ids_are_dropped_and_top_k_still_filled() -> None:
    docs = _unit(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    doc_ids = ["same", "near", "far"]
    run = exact_search(docs[:1], docs, ["same"], doc_ids, top_k=2, ignore_identical_ids=True)
    assert list(run["same"]) == ["near", "far"]
    kept = exact_search(docs[:1], docs, ["same"], doc_ids, top_k=2, ignore_identical_ids=False)
    assert list(kept["same"]) == ["same", "near"]

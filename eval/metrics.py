"""Metrics: retrieval metrics through pytrec_eval (trec_eval) plus MRR@k, and Spearman for STS.

pytrec_eval's ``recip_rank`` is not cut at any depth, so MRR@k is computed here: the reciprocal
rank of the first relevant document (relevance >= 1, trec_eval's default level) within the top k,
with trec_eval's ordering (score descending, ties by doc id descending).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RETRIEVAL_METRICS = ("ndcg@10", "map@100", "recall@100", "mrr@10")
_PYTREC_NAMES = {"ndcg": "ndcg_cut", "map": "map_cut", "recall": "recall"}


def _parse(metric: str) -> tuple[str, int]:
    name, _, depth = metric.partition("@")
    if name not in (*_PYTREC_NAMES, "mrr") or not depth.isdigit():
        raise ValueError(f"unknown metric {metric!r}; expected ndcg@k, map@k, recall@k or mrr@k")
    return name, int(depth)


def ranked(hits: Mapping[str, float]) -> list[str]:
    """Doc ids in trec_eval's order: score descending, ties broken by doc id descending."""
    return [doc_id for doc_id, _ in sorted(hits.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def mrr_at_k(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int
) -> dict[str, float]:
    """Per-query reciprocal rank of the first relevant doc within the top ``k`` (0 if none)."""
    scores = {}
    for query_id, relevant in qrels.items():
        if query_id not in run:
            continue
        scores[query_id] = 0.0
        for rank, doc_id in enumerate(ranked(run[query_id])[:k], start=1):
            if relevant.get(doc_id, 0) >= 1:
                scores[query_id] = 1.0 / rank
                break
    return scores


def retrieval_scores(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = RETRIEVAL_METRICS,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics over the queries that have both qrels and a run (as pytrec_eval).

    Returns:
        ({metric: mean in [0, 1]}, {metric: {query id: value}}).
    """
    import pytrec_eval

    parsed = {metric: _parse(metric) for metric in metrics}
    measures = {f"{_PYTREC_NAMES[name]}.{depth}" for name, depth in parsed.values() if name != "mrr"}
    qrels = {qid: dict(docs) for qid, docs in qrels.items()}
    run = {qid: dict(hits) for qid, hits in run.items() if qid in qrels}
    per_query_trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run) if measures else {}
    per_query: dict[str, dict[str, float]] = {}
    for metric, (name, depth) in parsed.items():
        if name == "mrr":
            per_query[metric] = mrr_at_k(qrels, run, depth)
        else:
            key = f"{_PYTREC_NAMES[name]}_{depth}"
            per_query[metric] = {qid: values[key] for qid, values in per_query_trec.items()}
    means = {metric: float(np.mean(list(values.values()))) if values else 0.0 for metric, values in per_query.items()}
    return means, per_query


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)

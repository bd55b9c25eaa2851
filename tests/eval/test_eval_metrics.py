"""Retrieval metrics on a hand-made example against hand-computed values, and Spearman/cosine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.metrics import mrr_at_k, paired_cosine, ranked, retrieval_scores, spearman

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d3": 2}}
RUN = {
    # q1: relevant at ranks 2 and 4
    "q1": {"d4": 0.9, "d1": 0.8, "d5": 0.7, "d2": 0.6},
    # q2: ten non-relevant hits, then the relevant one at rank 11 (outside the MRR@10 cut)
    "q2": {**{f"e{i}": 1.0 - i / 20 for i in range(10)}, "d3": 0.05},
}


def test_retrieval_metrics_match_hand_computed_values() -> None:
    means, per_query = retrieval_scores(QRELS, RUN)
    # q1: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3). q2: nothing relevant in the top 10.
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert per_query["ndcg@10"]["q1"] == pytest.approx(ndcg_q1, abs=1e-6)
    assert per_query["ndcg@10"]["q2"] == pytest.approx(0.0)
    # AP@100: q1 (1/2 + 2/4) / 2 = 0.5; q2 (1/11) / 1.
    assert per_query["map@100"]["q1"] == pytest.approx(0.5, abs=1e-6)
    assert per_query["map@100"]["q2"] == pytest.approx(1 / 11, abs=1e-6)
    assert means["recall@100"] == pytest.approx(1.0)
    # MRR@10: q1 1/2; q2 0, not 1/11 (pytrec_eval's uncut recip_rank would give 1/11).
    assert per_query["mrr@10"] == {"q1": 0.5, "q2": 0.0}
    assert means["mrr@10"] == pytest.approx(0.25)
    assert means["ndcg@10"] == pytest.approx(ndcg_q1 / 2, abs=1e-6)


def test_mrr_is_cut_at_k_and_counts_only_relevant_grades() -> None:
    qrels = {"q": {"a": 0, "b": 1}}
    run = {"q": {"a": 0.9, "b": 0.8}}
    assert mrr_at_k(qrels, run, 10) == {"q": 0.5}  # grade 0 is not relevant
    assert mrr_at_k(qrels, run, 1) == {"q": 0.0}


def test_ties_are_broken_by_doc_id_descending_like_trec_eval() -> None:
    assert ranked({"a": 0.5, "c": 0.5, "b": 0.7}) == ["b", "c", "a"]


def test_unknown_metric_is_rejected_with_the_allowed_names() -> None:
    with pytest.raises(ValueError, match="ndcg@k"):
        retrieval_scores(QRELS, RUN, ["p@5"])


def test_spearman_and_paired_cosine() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0]])
    assert paired_cosine(a, b) == pytest.approx([1.0, -1.0])

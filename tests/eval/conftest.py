"""Fixtures for the evaluation-harness tests; helpers live in ``eval_helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_helpers import write_beir


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """Four docs; query q1 is itself doc q1 (ArguAna-style); one qrel names a doc absent from the corpus."""
    corpus = [
        {"_id": "q1", "title": "Cats", "text": "cats are small domestic felines that purr"},
        {"_id": "d1", "title": "Cats", "text": "felines such as cats purr and chase mice"},
        {"_id": "d2", "title": "Rockets", "text": "rockets burn fuel to reach orbit around the earth"},
        {"_id": "d3", "title": "Bread", "text": "bread is baked from flour water and yeast"},
    ]
    queries = [
        {"_id": "q1", "text": "cats are small domestic felines that purr"},
        {"_id": "q2", "text": "how do rockets reach orbit"},
    ]
    qrels = [("q1", "d1", 1), ("q2", "d2", 1), ("q2", "gone", 1)]
    return write_beir(tmp_path / "arguana", corpus, queries, qrels)

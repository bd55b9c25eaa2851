"""The results figure: written only with references, identical from eval's rows and from results.json."""

from __future__ import annotations

import json
from pathlib import Path

from viz import comparison_figure, load_results, results_figure, write_record_plot, write_results_plot

ROWS = [
    {"key": "sts/STSBenchmark/spearman", "value": 82.1, "main": True, "reference": 82.03, "tolerance": 0.3,
     "difference": 0.07, "passed": True},
    {"key": "sts/SICK-R/spearman", "value": 76.9, "main": True, "reference": 77.58, "tolerance": 0.3,
     "difference": -0.68, "passed": False},
    {"key": "sts/average/spearman", "value": 79.5, "main": False},
]  # fmt: skip


def test_results_plot_is_a_png_and_none_without_references(tmp_path: Path) -> None:
    path = write_results_plot(tmp_path / "results.png", ROWS, "sts: m")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.png"]
    assert write_results_plot(tmp_path / "none.png", ROWS[2:], "sts: m") is None
    assert not (tmp_path / "none.png").exists()
    figure = results_figure(ROWS, "sts: m")
    left, right = figure.axes
    assert [t.get_text() for t in left.get_yticklabels()] == [row["key"] for row in ROWS]
    assert len(right.lines) == 2 + 1  # a difference per referenced row, and the zero line


def test_eval_writes_the_same_png_as_the_notebook_draws_from_results_json(tmp_path: Path) -> None:
    """``eval/run.py ... plot=true`` (eval.report.write_plot) and viz on the saved results.json agree byte for byte."""
    from eval.report import Score, compare, write_plot, write_results

    references = {"sts/STSBenchmark/spearman": {"value": 82.03, "tolerance": 0.3, "source": "MTEB"}}
    rows = compare(
        [Score("sts/STSBenchmark/spearman", 81.9, main=True), Score("sts/SICK-R/spearman", 77.0)], references
    )
    json_path, _ = write_results(tmp_path / "run", {"benchmark": "sts", "model": "m"}, rows)
    from_eval = write_plot(tmp_path / "run" / "results.png", rows, "sts: m")
    [record] = load_results(tmp_path / "run")
    from_viz = write_record_plot(record, tmp_path / "viz.png")
    assert from_eval is not None and from_viz is not None
    assert from_eval.read_bytes() == from_viz.read_bytes()
    assert record["results_path"] == str(json_path)


def test_load_results_reads_files_folders_and_globs(tmp_path: Path) -> None:
    for name, model in (("a", "m1"), ("b", "m2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"benchmark": "sts", "model": model, "rows": ROWS}))
    assert [r["model"] for r in load_results(tmp_path)] == ["m1", "m2"]
    assert [r["model"] for r in load_results(tmp_path / "*" / "results.json")] == ["m1", "m2"]
    assert [r["model"] for r in load_results(tmp_path / "b" / "results.json")] == ["m2"]
    assert load_results(tmp_path / "missing") == []
    figure = comparison_figure(load_results(tmp_path))
    assert len(figure.axes) == 1  # one benchmark
    assert len(figure.axes[0].patches) == 2 * 2  # two models x two main scores

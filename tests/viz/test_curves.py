"""Training curves from metrics.jsonl: reading, series, wildcard keys, the figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from viz import read_metrics, training_curves_figure
from viz.curves import expand_keys, series

RECORDS = [
    {"step": 0, "val_loss": 2.0, "val_accuracy": 0.1},
    {"step": 1, "loss": 2.1, "accuracy": 0.2, "temperature": 0.05, "lr": 1e-3, "grad_norm": 3.0,
     "pairs_per_s": 10.0, "tokens_per_s": 600.0, "loss@32": 2.3},
    {"step": 2, "loss": None, "accuracy": 0.5, "temperature": 0.049, "lr": 9e-4, "grad_norm": 2.0,
     "pairs_per_s": 12.0, "tokens_per_s": 700.0, "loss@32": 2.0},
    {"step": 2, "val_loss": 1.5, "val_accuracy": 0.4, "val_accuracy@32": 0.3},
]  # fmt: skip


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    return path


def test_read_metrics_takes_the_file_or_its_run_folder(tmp_path: Path) -> None:
    write(tmp_path / "metrics.jsonl", RECORDS)
    assert read_metrics(tmp_path) == read_metrics(tmp_path / "metrics.jsonl") == RECORDS
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "elsewhere")
    (tmp_path / "bad.jsonl").write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_metrics(tmp_path / "bad.jsonl")


def test_series_drops_nulls_and_keeps_the_last_value_of_a_step() -> None:
    assert series(RECORDS, "loss") == ([1], [2.1])
    assert series(RECORDS + [{"step": 1, "loss": 1.9}], "loss") == ([1], [1.9])
    assert series(RECORDS, "val_loss") == ([0, 2], [2.0, 1.5])


def test_wildcard_keys_expand_to_logged_prefix_sizes() -> None:
    records = RECORDS + [{"step": 3, "loss@128": 1.0, "loss@64": 1.1, "loss@x": 0.0}]
    assert expand_keys(("loss", "loss@*"), records) == ["loss", "loss@32", "loss@64", "loss@128"]


def test_figure_has_a_panel_per_logged_metric_and_overlays_runs() -> None:
    figure = training_curves_figure(RECORDS)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible() and axis.get_title()]
    assert len(titles) == 6
    loss_axis = figure.axes[0]
    assert [line.get_label() for line in loss_axis.lines] == ["loss", "val_loss", "loss@32"]
    overlaid = training_curves_figure({"a": RECORDS, "b": RECORDS[:2]})
    assert [line.get_label() for line in overlaid.axes[0].lines][:4] == ["a", "a: val_loss", "a: loss@32", "b"]
    with pytest.raises(ValueError, match="none of the keys"):
        training_curves_figure([{"step": 1, "other": 1.0}])

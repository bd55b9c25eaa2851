"""Evaluation results against reference numbers: the figure ``eval/run.py ... plot=true`` writes.

Reads the rows of ``results.json`` (``eval/report.py``): one mapping per score with ``key``
(``<benchmark>/<dataset>/<metric>``, values x100), ``value``, ``main``, and, when the score has a
reference, ``reference``, ``tolerance``, ``difference`` and ``passed``. ``eval/report.write_plot``
calls :func:`write_results_plot` on the same rows, so the notebook and the command line draw
byte-identical PNGs from one run.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from viz.figures import save_figure

PASS_COLOR, FAIL_COLOR, UNCHECKED_COLOR, REFERENCE_COLOR = "tab:green", "tab:red", "tab:blue", "0.65"


def _color(row: Mapping[str, Any]) -> str:
    passed = row.get("passed")
    return UNCHECKED_COLOR if passed is None else (PASS_COLOR if passed else FAIL_COLOR)


def _referenced(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [row for row in rows if row.get("reference") is not None]


def results_figure(rows: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    """Bars of every score beside its reference (left) and each difference inside its tolerance band (right).

    One horizontal row per score, shared by both panels; main scores have bold labels. Measured
    bars are green (within tolerance), red (outside) or blue (no reference); reference bars grey.

    Args:
        rows: ``results.json``'s ``rows`` (or ``dataclasses.asdict`` of ``eval.report.Row``).
        title: the figure title, e.g. ``"beir: all-MiniLM-L6-v2"``.

    Returns:
        The figure, or None when no row has a reference value (nothing to compare against).
    """
    referenced = _referenced(rows)
    if not referenced:
        return None
    count = len(rows)
    figure = Figure(figsize=(9.0, 1.3 + 0.42 * count))
    left, right = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    positions = list(range(count))[::-1]  # first row on top
    top = max(max(row["value"] for row in rows), max(row["reference"] for row in referenced))
    for y, row in zip(positions, rows, strict=True):
        has_reference = row.get("reference") is not None
        height = 0.38 if has_reference else 0.6
        offset = 0.2 if has_reference else 0.0
        left.barh(y + offset, row["value"], height=height, color=_color(row))
        left.annotate(
            f"{row['value']:.2f}",
            (row["value"], y + offset),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
        if has_reference:
            left.barh(y - offset, row["reference"], height=height, color=REFERENCE_COLOR)
            left.annotate(
                f"{row['reference']:.2f}",
                (row["reference"], y - offset),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="0.35",
            )
            tolerance = row.get("tolerance") or 0.0
            difference = row["difference"] if row.get("difference") is not None else row["value"] - row["reference"]
            right.fill_betweenx([y - 0.3, y + 0.3], -tolerance, tolerance, color="0.88")
            right.plot(difference, y, "o", color=_color(row))
            right.annotate(
                f"{difference:+.2f}",
                (difference, y),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    left.set_yticks(positions, [row["key"] for row in rows], fontsize=7)
    for label, row in zip(left.get_yticklabels(), rows, strict=True):
        label.set_fontweight("bold" if row.get("main") else "normal")
    left.set_xlim(0, top * 1.15 if top > 0 else 1.0)
    left.set_xlabel("score (x100); grey: reference", fontsize=8)
    spread = max(max(abs(r["value"] - r["reference"]), r.get("tolerance") or 0.0) for r in referenced)
    right.set_xlim(-1.35 * spread or -1.0, 1.35 * spread or 1.0)
    right.axvline(0.0, color="0.5", linewidth=0.8)
    right.set_xlabel("measured - reference (grey: tolerance)", fontsize=8)
    right.tick_params(labelsize=7)
    left.tick_params(axis="x", labelsize=7)
    left.set_ylim(-0.6, count - 0.4)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def write_results_plot(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str) -> Path | None:
    """Draw :func:`results_figure` and save it atomically to ``path``.

    Returns:
        The path, or None (and nothing written) when no row has a reference value.
    """
    figure = results_figure(rows, title)
    return None if figure is None else save_figure(figure, path)


def record_title(record: Mapping[str, Any]) -> str:
    """The title ``eval/run.py`` gives a run's figure: ``"<benchmark>: <model>"``."""
    return f"{record.get('benchmark')}: {record.get('model')}"


def write_record_plot(record: Mapping[str, Any], path: str | Path) -> Path | None:
    """The PNG ``eval/run.py ... plot=true`` writes beside this ``results.json`` record, written to ``path``."""
    return write_results_plot(path, record["rows"], record_title(record))


def load_results(pattern: str | Path) -> list[dict[str, Any]]:
    """Read ``results.json`` records from a file, a folder (searched recursively) or a glob pattern.

    Each record is returned as written, plus ``results_path`` (where it was read), sorted by path.
    """
    path = Path(pattern).expanduser()
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = sorted(path.rglob("results.json"))
    else:
        paths = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    records = []
    for found in paths:
        record = json.loads(found.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or "rows" not in record:
            raise ValueError(f"{found}: not an eval results.json (no 'rows'); written by eval/run.py?")
        records.append({**record, "results_path": str(found)})
    return records


def comparison_figure(records: Sequence[Mapping[str, Any]], main_only: bool = True) -> Figure:
    """One panel per benchmark: a bar per model and score, with each model's reference as a black tick.

    Args:
        records: ``results.json`` records (several models, several benchmarks); for a model run
            twice on a benchmark the later record (in the given order) wins.
        main_only: plot only each benchmark's main scores (e.g. nDCG@10), else every score.

    Returns:
        The figure.
    """
    if not records:
        raise ValueError("no results records to compare; pass at least one results.json record")
    benchmarks: dict[str, dict[str, Mapping[str, Any]]] = {}
    for record in records:
        benchmarks.setdefault(str(record.get("benchmark")), {})[str(record.get("model"))] = record
    figure = Figure(figsize=(4.0 + 2.2 * len(benchmarks), 3.6))
    axes = figure.subplots(1, len(benchmarks), squeeze=False)[0]
    palette = [f"C{i}" for i in range(10)]
    models = list(dict.fromkeys(model for runs in benchmarks.values() for model in runs))
    for axis, (benchmark, runs) in zip(axes, benchmarks.items(), strict=True):
        keys: list[str] = []
        for record in runs.values():
            keys.extend(row["key"] for row in record["rows"] if row.get("main") or not main_only)
        keys = list(dict.fromkeys(keys)) or list(dict.fromkeys(r["key"] for rec in runs.values() for r in rec["rows"]))
        width = 0.8 / max(1, len(runs))
        for index, (model, record) in enumerate(runs.items()):
            by_key = {row["key"]: row for row in record["rows"]}
            color = palette[models.index(model) % len(palette)]
            for position, key in enumerate(keys):
                row = by_key.get(key)
                if row is None:
                    continue
                x = position - 0.4 + width * (index + 0.5)
                axis.bar(x, row["value"], width=width * 0.92, color=color, label=model if position == 0 else None)
                axis.annotate(
                    f"{row['value']:.1f}",
                    (x, row["value"]),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    fontsize=6,
                )
                if row.get("reference") is not None:
                    axis.hlines(row["reference"], x - width / 2, x + width / 2, color="black", linewidth=1.6)
        axis.set_xticks(range(len(keys)), [key.split("/", 1)[-1] for key in keys], rotation=20, ha="right", fontsize=7)
        axis.set_title(benchmark, fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
        axis.set_ylabel("score (x100)", fontsize=8)
    handles, labels = [], []
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    figure.suptitle("main scores per benchmark (black tick: the model's reference)", fontsize=9)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure

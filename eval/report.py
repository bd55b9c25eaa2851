"""Scores, their comparison with references, the results table, and atomic JSON/markdown output.

Score keys are ``<benchmark>/<dataset>/<metric>`` (e.g. ``beir/arguana/ndcg@10``), values x100.
References live in ``configs/references/*.yaml``: model key -> score key -> {value, tolerance,
source}. A reference without a value (unknown) is shown but never checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_TOLERANCE = 0.3


@dataclass
class Score:
    """One number a benchmark produced (x100), ``main`` marking the benchmark's headline metric."""

    key: str
    value: float
    main: bool = False


@dataclass
class Row:
    """A score beside its reference: ``passed`` is None when there is no reference value."""

    key: str
    value: float
    main: bool
    reference: float | None = None
    tolerance: float | None = None
    difference: float | None = None
    passed: bool | None = None
    reference_source: str | None = None


def compare(scores: list[Score], references: Mapping[str, Any] | None) -> list[Row]:
    """Attach each score's reference (if any), the difference and pass/fail within tolerance."""
    rows = []
    for score in scores:
        row = Row(key=score.key, value=score.value, main=score.main)
        entry = (references or {}).get(score.key)
        if entry is not None and entry.get("value") is not None:
            row.reference = float(entry["value"])
            row.tolerance = float(entry.get("tolerance") if entry.get("tolerance") is not None else DEFAULT_TOLERANCE)
            row.difference = round(score.value - row.reference, 4)
            # A tiny epsilon so a difference printed as exactly the tolerance passes.
            row.passed = abs(score.value - row.reference) <= row.tolerance + 1e-9
            row.reference_source = entry.get("source")
        rows.append(row)
    return rows


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def markdown_table(rows: list[Row]) -> str:
    """The results table: score, reference, difference, tolerance and pass/fail per row."""
    lines = [
        "| score | value | reference | difference | tolerance | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        result = "" if row.passed is None else ("pass" if row.passed else "**FAIL**")
        key = f"**{row.key}**" if row.main else row.key
        lines.append(
            f"| {key} | {_fmt(row.value)} | {_fmt(row.reference)} | {_fmt(row.difference, signed=True)} "
            f"| {_fmt(row.tolerance)} | {result} |"
        )
    sources = sorted({row.reference_source for row in rows if row.reference_source})
    if sources:
        lines.append("")
        lines.extend(f"Reference source: {source}" for source in sources)
    return "\n".join(lines)


def git_commit(root: Path) -> str | None:
    """The checked-out commit (with ``+dirty`` when tracked files differ), or None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_results(output_dir: Path, record: dict[str, Any], rows: list[Row]) -> tuple[Path, Path]:
    """Write ``results.json`` (record plus rows) and ``results.md`` atomically; return both paths."""
    record = {**record, "rows": [asdict(row) for row in rows]}
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    write_atomic(json_path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    header = [
        f"# {record.get('benchmark')} - {record.get('model')}",
        "",
        f"- git commit: {record.get('git_commit')}",
        f"- command: `{record.get('command')}`",
        f"- wall time: {record.get('seconds', 0):.0f} s",
        "- data sha256:",
        *[f"  - {name}: `{digest}`" for name, digest in sorted(record.get("data_sha256", {}).items())],
        "",
    ]
    sizes = f"\n## By embedding size\n\n{record['size_table']}\n" if record.get("size_table") else ""
    write_atomic(md_path, "\n".join(header) + markdown_table(rows) + "\n" + sizes)
    return json_path, md_path


def write_plot(path: Path, rows: list[Row], title: str) -> Path | None:
    """Plot every score beside its reference, and each difference inside its tolerance band, atomically.

    The figure is ``viz.results.results_figure`` (shared with ``notebooks/eval_results.ipynb``,
    which draws the same PNG from ``results.json``). Returns the path, or None when no score has
    a reference value (nothing to compare against).
    """
    from viz.results import write_results_plot

    return write_results_plot(path, [asdict(row) for row in rows], title)

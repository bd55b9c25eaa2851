"""Training curves from the ``metrics.jsonl`` a training run writes (``train/tracking.py``).

Each line is one JSON object. Training steps carry ``step``, ``epoch``, ``samples_seen``,
``loss``, ``accuracy`` (in-batch top-1), ``temperature``, ``lr``, ``grad_norm``, ``pairs_per_s``
and ``tokens_per_s``; held-out validations carry ``step``, ``val_loss`` and ``val_accuracy``
(at step 0, every ``trainer.eval_every`` steps and at the end). With Matryoshka training a run
also logs ``loss@<dim>`` and ``val_accuracy@<dim>`` per prefix size. Non-finite values are
written as ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


@dataclass(frozen=True)
class Panel:
    """One axis of the figure: the metric keys it draws.

    The first key is a solid line, ``val_*`` keys dashed with markers (few points), others thin
    lines; a key ending in ``@*`` stands for every logged key with that prefix (``loss@*``:
    ``loss@64``, ``loss@128``, ...).
    """

    title: str
    keys: tuple[str, ...]
    log_y: bool = False


PANELS = (
    Panel("contrastive loss (val: held-out batch)", ("loss", "val_loss", "loss@*")),
    Panel("in-batch top-1 accuracy", ("accuracy", "val_accuracy", "val_accuracy@*")),
    Panel("temperature T = exp(-tau)", ("temperature",)),
    Panel("learning rate", ("lr",)),
    Panel("gradient norm (before clipping)", ("grad_norm",), log_y=True),
    Panel("throughput: pairs/s (tokens/s dotted, right)", ("pairs_per_s", "tokens_per_s")),
)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a run's ``metrics.jsonl`` (or the run folder holding it); blank lines are skipped.

    Raises:
        FileNotFoundError: naming the path when there is no metrics file.
        ValueError: naming the line that is not a JSON object.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (a training run writes runs/<name>/metrics.jsonl)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'step', got {line[:80]!r}")
        records.append(record)
    return records


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key``, in step order; a step logged twice keeps its last value, nulls are dropped."""
    by_step: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if value is not None:
            by_step[int(record["step"])] = float(value)
    steps = sorted(by_step)
    return steps, [by_step[step] for step in steps]


def expand_keys(keys: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """``keys`` with each ``prefix@*`` replaced by the logged keys ``prefix@<n>``, in numeric order."""
    logged = list(dict.fromkeys(key for record in records for key in record))
    expanded: list[str] = []
    for key in keys:
        if key.endswith("@*"):
            prefix = key[:-1]
            matches = [k for k in logged if k.startswith(prefix) and k[len(prefix) :].isdigit()]
            expanded.extend(sorted(matches, key=lambda k: int(k[len(prefix) :])))
        else:
            expanded.append(key)
    return expanded


def training_curves_figure(
    runs: Mapping[str, Sequence[Mapping[str, Any]]] | Sequence[Mapping[str, Any]],
    panels: Sequence[Panel] = PANELS,
    title: str | None = None,
) -> Figure:
    """Loss, accuracy, temperature, learning rate, gradient norm and throughput against the step.

    Args:
        runs: one run's records (from :func:`read_metrics`), or run name -> records to overlay
            several runs (one colour per run).
        panels: which metrics to draw; a panel none of whose keys any run logged is left out.
        title: the figure title; defaults to the run names.

    Returns:
        The figure (two or three columns of panels).
    """
    if not isinstance(runs, Mapping):
        runs = {"run": runs}
    if not runs:
        raise ValueError("no runs to plot")
    keys_of = {p: {name: expand_keys(p.keys, records) for name, records in runs.items()} for p in panels}
    present = [p for p in panels if any(series(runs[n], k)[0] for n, keys in keys_of[p].items() for k in keys)]
    if not present:
        raise ValueError(f"none of the keys {[k for p in panels for k in p.keys]} appears in the metrics")
    columns = 3 if len(present) > 4 else 2
    rows = -(-len(present) // columns)
    figure = Figure(figsize=(4.0 * columns, 2.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, panel in zip(axes, present, strict=False):
        twin = None
        for index, (name, records) in enumerate(runs.items()):
            color = f"C{index % 10}"
            for k, key in enumerate(keys_of[panel][name]):
                steps, values = series(records, key)
                if not steps:
                    continue
                label = key if len(runs) == 1 else (name if k == 0 else f"{name}: {key}")
                if key == "tokens_per_s":
                    twin = twin or axis.twinx()
                    twin.plot(steps, values, ":", color=color, linewidth=1.0)
                    twin.tick_params(labelsize=7)
                elif k == 0:
                    axis.plot(steps, values, "-", color=color, linewidth=1.2, label=label)
                elif key.startswith("val_"):  # a few points: one marker each
                    axis.plot(steps, values, "--o", color=color, markersize=3.5, linewidth=0.9, label=label)
                else:
                    axis.plot(steps, values, "-", color=color, linewidth=0.7, alpha=0.6, label=label)
        axis.set_title(panel.title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
        if panel.log_y:
            axis.set_yscale("log")
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, frameon=False)
    for axis in axes[len(present) :]:
        axis.set_visible(False)
    figure.suptitle(title or ", ".join(runs), fontsize=10)
    return figure

"""The data side of hard-negative mining: the candidate pool, each row's positives, the mined set on disk.

Mining itself (a model encodes the pool, exact top-k search, the skip and margin filters) lives in
:mod:`eval.mining` (``python -m eval.mine``); this module holds what needs no model:

* :func:`build_pool`: the candidate texts, every distinct ``y`` of the set (or a ``--corpus``
  column), less every text that contains a benchmark text (:mod:`pairdata.leakage`);
* :class:`Positives`: for each row, the hashes of every ``y`` paired with the same ``x`` (and of
  ``x``), which must never become its negatives;
* :func:`write_part`: one block of mined rows as ``OUT/parts/part-NNNNN.parquet`` (``x``, ``y``,
  ``negatives``, ``positive_score``, ``negative_scores``) with its counts in ``OUT/stats/``, each
  written atomically so a rerun resumes; :func:`merge_stats` sums them for the manifest;
* :func:`load_mined` (``data=mined``) and :func:`load_corpus` (``--corpus``): reading them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pairdata.errors import DataFormatError
from pairdata.progress import progress
from pairdata.store import write_text_atomic

SCORE_BINS = np.linspace(-1.0, 1.0, 41)


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    import xxhash

    return np.fromiter(
        (xxhash.xxh64_intdigest(t.encode("utf-8", "surrogatepass")) for t in texts), np.uint64, len(texts)
    )


def column_hashes(dataset: Any, column: str, show_progress: bool) -> np.ndarray:
    """(rows,) uint64 hashes of a column's texts, read in batches."""
    out = np.empty(len(dataset), dtype=np.uint64)
    starts = range(0, len(dataset), 65_536)
    for start in progress(starts, enabled=show_progress, desc=f"hash {column}", unit="batch", total=len(starts)):
        out[start : start + 65_536] = text_hashes(dataset[start : start + 65_536][column])
    return out


@dataclass
class Pool:
    """The candidate texts: ``rows`` index ``source[column]``; ``keys`` are their hashes."""

    source: Any
    column: str
    rows: np.ndarray
    keys: np.ndarray
    leaked: int

    def texts(self, positions: Sequence[int]) -> list[str]:
        return self.source[self.rows[np.asarray(positions, dtype=np.int64)].tolist()][self.column]


def build_pool(source: Any, column: str, keys: np.ndarray, leakage: Any, show_progress: bool) -> Pool:
    """Distinct texts of ``source[column]`` (first occurrence), less those that contain a benchmark text."""
    _, first = np.unique(keys, return_index=True)
    rows = np.sort(first)
    leaked = 0
    if leakage is not None:
        keep = np.ones(len(rows), dtype=bool)
        starts = range(0, len(rows), 4096)
        for start in progress(starts, enabled=show_progress, desc="leakage check", unit="batch", total=len(starts)):
            texts = source[rows[start : start + 4096].tolist()][column]
            keep[start : start + len(texts)] = [not leakage.leaks(text) for text in texts]
        leaked = int((~keep).sum())
        rows = rows[keep]
    return Pool(source, column, rows, keys[rows], leaked)


class Positives:
    """For each row, the hashes of every ``y`` paired with the same ``x`` (and of ``x`` itself)."""

    def __init__(self, x_keys: np.ndarray, y_keys: np.ndarray) -> None:
        order = np.lexsort((y_keys, x_keys))
        self.x_sorted, self.y_sorted = x_keys[order], y_keys[order]
        self.x_keys = x_keys
        _, counts = np.unique(self.x_sorted, return_counts=True)
        self.largest_group = int(counts.max()) if len(counts) else 0

    def of(self, row: int) -> np.ndarray:
        key = self.x_keys[row]
        low, high = np.searchsorted(self.x_sorted, key, "left"), np.searchsorted(self.x_sorted, key, "right")
        return np.append(self.y_sorted[low:high], key)


def sample_rows(dataset: Any, size: int, seed: int) -> Any:
    """``size`` rows of ``dataset`` drawn without replacement (seeded), in the dataset's order."""
    if size < 1:
        raise ValueError(f"--sample must be at least 1, got {size}")
    if size >= len(dataset):
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), size=size, replace=False))
    return dataset.select(rows.tolist())


# ---- the mined set on disk -------------------------------------------------------------------------


def write_part(
    part: Path,
    stats_file: Path,
    rows: Mapping[str, list],
    negatives: list[list[str]],
    positive_scores: np.ndarray,
    negative_scores: list[list[float]],
    cap: int,
    drops: Mapping[str, int],
) -> None:
    """One block of mined rows and its counts, each file written atomically (the stats first: a part
    without its stats is redone by a rerun)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "x": rows["x"], "y": rows["y"], "negatives": negatives,
        "positive_score": positive_scores.astype(np.float32), "negative_scores": negative_scores,
    })  # fmt: skip
    write_text_atomic(stats_file, json.dumps(block_stats(positive_scores, negative_scores, cap, drops)))
    temporary = part.with_name(f".{part.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, part)


def block_stats(
    positive: np.ndarray, negative_scores: list[list[float]], cap: int, drops: Mapping[str, int]
) -> dict[str, Any]:
    """One block's counts: rows by number of negatives, drops by reason, score and margin histograms."""
    counts = np.bincount([len(s) for s in negative_scores], minlength=cap + 1)
    flat = np.asarray([s for row in negative_scores for s in row], dtype=np.float64)
    margins = np.asarray([p - s for p, row in zip(positive, negative_scores, strict=True) for s in row])
    return {
        "rows": len(positive),
        "rows_by_negatives": counts.tolist(),
        "dropped": dict(drops),
        "positive_scores": np.histogram(positive, SCORE_BINS)[0].tolist(),
        "negative_scores": np.histogram(flat, SCORE_BINS)[0].tolist(),
        "margins": np.histogram(margins, SCORE_BINS)[0].tolist(),
    }


def merge_stats(files: Sequence[Path], cap: int, reasons: Sequence[str]) -> dict[str, Any]:
    """The blocks' counts summed (``reasons``: every drop reason, listed even when nothing was dropped)."""
    total: dict[str, Any] = {"rows": 0, "rows_by_negatives": [0] * (cap + 1), "dropped": dict.fromkeys(reasons, 0)}
    for name in ("positive_scores", "negative_scores", "margins"):
        total[name] = [0] * (len(SCORE_BINS) - 1)
    for path in files:
        stats = json.loads(path.read_text())
        total["rows"] += stats["rows"]
        for key in ("rows_by_negatives", "positive_scores", "negative_scores", "margins"):
            total[key] = [a + b for a, b in zip(total[key], stats[key], strict=True)]
        for reason, count in stats["dropped"].items():
            total["dropped"][reason] += count
    total["negatives"] = sum(k * n for k, n in enumerate(total["rows_by_negatives"]))
    total["rows_short"] = sum(total["rows_by_negatives"][:cap])
    return total


def load_corpus(path: str, column: str) -> Any:
    """Candidate texts from files (``--corpus``): the ``column`` of every row, memory-mapped."""
    import datasets

    from pairdata.trainsets import expand_files, format_of

    files = expand_files(path)
    corpus = datasets.load_dataset(format_of(files), data_files=files, split="train")
    if column not in corpus.column_names:
        raise DataFormatError(
            path, f"has no column {column!r} (--corpus-column); its columns are {corpus.column_names}"
        )
    return corpus.select_columns([column])


def load_mined(path: str, limit: int | None = None, streaming: bool = False) -> Any:
    """``data=mined``: the pairs and negatives a finished ``python -m eval.mine --out PATH`` wrote."""
    from pairdata.trainsets import load_files

    folder = Path(path).expanduser()
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(
            f"data.path={path}: no finished mining run there (manifest.json is written last; rerun the same "
            "`python -m eval.mine` command to finish it)"
        )
    return load_files(str(folder / "parts"), format="parquet", limit=limit, streaming=streaming)

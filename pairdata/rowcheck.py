"""What a valid training row is, checked a pyarrow batch at a time, and the verdict kept per dataset.

A row needs ``x`` and ``y``: strings of valid UTF-8 with a non-space character. ``negatives``
(optional) is a list of such strings, or, before :func:`pairdata.trainsets.pack_negatives` joins
them, string columns where a null is a missing negative. :func:`first_bad_value` runs these checks
on one Arrow batch; :func:`check_rows` scans a memory-mapped set with it and records the verdict
under the set's fingerprint, so a set is scanned once, not at every start and resume.
:func:`check_row` is the same check for one streamed row of a set not read by
:mod:`pairdata.filesets` (e.g. a hub stream).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairdata.errors import DataFormatError
from pairdata.store import exclusive, write_text_atomic

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

TEXT_COLUMNS = ("x", "y")
SCAN_BATCH_ROWS = 65_536
CHECKS_VERSION = 2  # bump when the checks change: earlier verdicts no longer hold


@dataclass(frozen=True)
class BadValue:
    """The first invalid value of a batch: its row (inside the batch), its column and what is wrong."""

    row: int
    column: str
    problem: str


@dataclass(frozen=True)
class RowOrigin:
    """Where a row of a set lies: the file (or the set's name), the row inside it and, for JSON Lines, the line."""

    path: str
    row: int
    line: int | None = None

    def error(self, bad: BadValue) -> DataFormatError:
        return DataFormatError(self.path, f"row {self.row}: column {bad.column!r} {bad.problem}", line=self.line)


Locate = Callable[[int], RowOrigin]  # a row of the set -> where it came from


def column_type_error(label: str, column: str, role: str, dtype: Any) -> DataFormatError | None:
    """An error when ``column`` cannot hold what ``role`` needs, else None. Roles: ``x``, ``y``,
    ``negatives`` (a list column) and ``negative`` (one string column of several, packed later)."""
    import pyarrow as pa

    if role in TEXT_COLUMNS and not _is_string(dtype):
        return DataFormatError(label, f"column {column!r} (for {role!r}) must hold strings, it holds {dtype}")
    if role == "negative" and not (_is_string(dtype) or pa.types.is_null(dtype)):
        return DataFormatError(label, f"column {column!r} (for 'negatives') must hold strings, it holds {dtype}")
    if role == "negatives" and not pa.types.is_null(dtype):
        is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
        if not is_list or not (_is_string(dtype.value_type) or pa.types.is_null(dtype.value_type)):
            return DataFormatError(label, f"column {column!r} must hold lists of strings, it holds {dtype}")
    return None


def first_bad_value(batch: pa.RecordBatch, texts: Sequence[str], negatives: Sequence[str] = ()) -> BadValue | None:
    """The first invalid value of ``batch`` in row order (text columns first within a row's checks)."""
    found = [bad for bad in (_bad_text(batch.column(name), name) for name in texts) if bad is not None]
    found += [bad for bad in (_bad_negative(batch.column(name), name) for name in negatives) if bad is not None]
    return min(found, key=lambda bad: bad.row) if found else None


def _bad_text(column: pa.Array, name: str) -> BadValue | None:
    invalid = _first_invalid_utf8(column)
    blank = _first_blank(column if invalid < 0 else _invalid_nulled(column))
    if invalid >= 0 and invalid <= blank:
        return BadValue(invalid, name, "holds text that is not valid UTF-8")
    if blank >= 0:
        return BadValue(blank, name, f"must be a non-empty string, got {column[blank].as_py()!r:.80}")
    return None


def _bad_negative(column: pa.Array, name: str) -> BadValue | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(column.type):
        return None
    if _is_string(column.type):  # one negative per column (before packing): null = missing
        values, rows = column, None
    else:
        values, rows = pc.list_flatten(column), pc.list_parent_indices(column)
        if pa.types.is_null(values.type) or not len(values):
            return None
    invalid = _first_invalid_utf8(values)
    if invalid >= 0:
        hit, problem = invalid, "holds a negative that is not valid UTF-8"
    else:
        hit, problem = _first_blank(values, null_is_blank=rows is not None), "holds an empty negative"
    if hit < 0:
        return None
    return BadValue(hit if rows is None else rows[hit].as_py(), name, problem)


def _first_blank(column: pa.Array, null_is_blank: bool = True) -> int:
    """Index of the first whitespace-only (or null) string of an Arrow array of valid UTF-8, or -1."""
    import pyarrow.compute as pc

    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
    blank = pc.or_kleene(pc.is_null(column), empty) if null_is_blank else empty
    return pc.index(pc.fill_null(blank, null_is_blank), True).as_py()


def _invalid_nulled(column: pa.Array) -> pa.Array:
    """The column with its values that are not valid UTF-8 set to null (only on the failure path)."""
    import pyarrow as pa

    binary = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    return pa.array([_decoded(value) for value in binary.to_pylist()], type=column.type)


def _decoded(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _first_invalid_utf8(column: pa.Array) -> int:
    """Index of the first value that is not valid UTF-8 (Arrow readers may let such bytes through), or -1."""
    import pyarrow as pa

    try:
        column.validate(full=True)
        return -1
    except pa.ArrowInvalid:
        binary = column.view(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
        for index, value in enumerate(binary.to_pylist()):
            if value is not None and _decoded(value) is None:
                return index
        return -1


def _is_string(dtype: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


# ---- memory-mapped sets: one scan per fingerprint ---------------------------------------------------


def check_rows(
    dataset: datasets.Dataset, label: str, mapping: Mapping[str, str] | None = None, locate: Locate | None = None
) -> None:
    """Every ``x``/``y`` a non-empty UTF-8 string, every ``negatives`` a list of them, unless this set
    (same fingerprint, files and column map) already passed.

    Args:
        mapping: our column -> the set's column (the columns to read).
        locate: the file and row of a row of the set (default: the set's ``label`` and the row).

    Raises:
        DataFormatError: the first bad value, naming the file (or set), row and column.
    """
    mapping = {ours: theirs for ours, theirs in (mapping or {n: n for n in (*TEXT_COLUMNS, "negatives")}).items()}
    mapping = {ours: theirs for ours, theirs in mapping.items() if ours != "source" and theirs in dataset.column_names}
    for ours, theirs in mapping.items():
        error = column_type_error(label, theirs, ours, dataset.features.arrow_schema.field(theirs).type)
        if error is not None:
            raise error
    verdict = _verdict_path(dataset, mapping)
    if verdict is None:
        _scan(dataset, label, mapping, locate)
        return
    if verdict.is_file():
        return
    with exclusive(verdict.with_suffix(".lock")):  # processes starting together: one scans, the others wait
        if not verdict.is_file():
            rows = _scan(dataset, label, mapping, locate)
            verdict.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(verdict, json.dumps({"label": label, "rows": rows, "columns": mapping}))


def _scan(dataset: datasets.Dataset, label: str, mapping: Mapping[str, str], locate: Locate | None) -> int:
    """Every row through :func:`first_bad_value`; returns the row count, raises at the first bad value."""
    texts = [mapping[name] for name in TEXT_COLUMNS]
    negatives = [mapping["negatives"]] if "negatives" in mapping else []
    start = 0
    for batch in _record_batches(dataset, list(mapping.values())):
        bad = first_bad_value(batch, texts, negatives)
        if bad is not None:
            origin = locate(start + bad.row) if locate is not None else RowOrigin(label, start + bad.row)
            raise origin.error(bad)
        start += batch.num_rows
    return start


def _verdict_path(dataset: datasets.Dataset, mapping: Mapping[str, str]) -> Path | None:
    """Where the verdict of this set's scan lives: keyed by its fingerprint, its files (path, size, mtime)
    and the column map; None for a set held in memory (nothing on disk to key it by)."""
    import datasets as hf

    files = [entry["filename"] for entry in dataset.cache_files]
    if not files:
        return None
    stats = []
    for name in files:
        status = os.stat(name)
        stats.append([name, status.st_size, status.st_mtime_ns])
    key = json.dumps([CHECKS_VERSION, dataset._fingerprint, sorted(mapping.items()), stats, len(dataset)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(hf.config.HF_DATASETS_CACHE) / "cpt-row-checks" / f"{digest}.json"


def _record_batches(dataset: datasets.Dataset, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The dataset's ``names`` columns as pyarrow record batches.

    A set backed by Arrow files (and not re-indexed) is read from the files through buffered
    reads rather than the memory map, so a scan of a 50M-row set does not leave its pages resident.
    """
    import pyarrow as pa

    files = [entry["filename"] for entry in dataset.cache_files]
    if dataset._indices is None and files and sum(_arrow_rows(f) for f in files) == len(dataset):
        for filename in files:
            with pa.OSFile(filename, "rb") as handle:
                for batch in pa.ipc.open_stream(handle):
                    yield batch.select(list(names))
        return
    for table in dataset.select_columns(list(names)).with_format("arrow").iter(batch_size=SCAN_BATCH_ROWS):
        yield from table.to_batches()


def _arrow_rows(filename: str) -> int:
    import pyarrow as pa

    with pa.memory_map(filename, "r") as handle:  # reads only the batch headers
        return sum(batch.num_rows for batch in pa.ipc.open_stream(handle))


# ---- one streamed row -------------------------------------------------------------------------------


def check_row(row: Mapping[str, Any], label: str, index: int) -> None:
    """The same checks for one streamed row (``index``: its position in this process's stream)."""
    for name in TEXT_COLUMNS:
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(
                label, f"streamed row {index}: column {name!r} must be a non-empty string, got {value!r:.80}"
            )
    negatives = row.get("negatives")
    if negatives is not None and (
        not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives)
    ):
        raise DataFormatError(label, f"streamed row {index}: column 'negatives' must be a list of non-empty strings")

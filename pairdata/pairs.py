"""Positive pairs (x, y) and the JSONL format every pair source can be written to and read from."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pairdata.errors import DataFormatError


@dataclass(frozen=True)
class Pair:
    """One positive pair: ``x`` is encoded by the tower's first side, ``y`` by its second."""

    x: str
    y: str


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Raises:
        DataFormatError: the file is missing, or a line is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    number = 0
    lines = _read_lines(path)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as error:  # a truncated .gz, or a .gz that is not gzip
            raise DataFormatError(
                path, f"cannot be decompressed ({type(error).__name__}: {error})", line=number + 1
            ) from None
        number += 1
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataFormatError(
                path, f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})", line=number
            ) from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(path, f"not valid JSON ({error.msg})", line=number) from None
        if not isinstance(record, dict):
            raise DataFormatError(path, "expected a JSON object per line", line=number)
        yield number, record


def load_jsonl_pairs(path: str | Path, x_field: str = "x", y_field: str = "y") -> list[Pair]:
    """Read pairs from a JSONL file whose records hold two non-empty string fields.

    Args:
        path: the file (``.jsonl`` or ``.jsonl.gz``).
        x_field: the field read as ``x`` (e.g. ``query``, ``docstring``).
        y_field: the field read as ``y`` (e.g. ``positive``, ``code``).

    Raises:
        DataFormatError: naming the file and line of the first malformed record.
    """
    pairs = []
    for number, record in iter_jsonl(path):
        values = []
        for field in (x_field, y_field):
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                raise DataFormatError(
                    path, f"field {field!r} must be a non-empty string, got {value!r:.80}", line=number
                )
            values.append(value)
        pairs.append(Pair(*values))
    if not pairs:
        raise DataFormatError(path, "holds no pairs")
    return pairs


def _read_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes (decoded per line by the caller, so an error names its line)."""
    if path.suffix == ".gz":
        import gzip

        handle = gzip.open(path, "rb")
    else:
        handle = path.open("rb")
    with handle:
        yield from handle

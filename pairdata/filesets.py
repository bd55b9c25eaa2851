"""Pair files read with pyarrow a batch at a time: JSON Lines, Parquet, CSV and Arrow (each optionally .gz).

A :class:`FileSet` is what ``data=files`` reads (:func:`pairdata.trainsets.load_files`): the files,
their format and the columns the trainer needs, with their types, checked in every file up front
(Parquet, Arrow and CSV carry their columns in a footer or header) so a file missing one is named.

* Memory-mapped: :meth:`FileSet.convert` writes those columns into one Arrow file, a Parquet row
  group (or a block of text) at a time, in a folder keyed by the files (path, size, mtime) and the
  columns, renamed into place when complete; ``datasets`` memory-maps it, and the per-file row counts
  kept beside it turn a row of the set back into its file and row (:meth:`FileSet.origin`).
* Streamed: :meth:`FileSet.stream` is an ``IterableDataset`` whose shards are the files' row groups
  (Parquet) or the files, so processes split it without reading each other's rows; each batch is
  checked where it is read, so a bad value names its file, row and column, at the row.

Why not ``datasets.load_dataset("parquet", ...)``: it reads through Arrow's dataset scanner, which
buffers ahead: converting one 1.2 GB file held 1.8 GB of anonymous memory (0.8 GB with pre-buffering
off), where ``ParquetFile.iter_batches`` one row group at a time held 0.26 GB (docs/data.md); and a
``datasets`` builder knows a set, not the file and row a value came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pairdata.errors import DataFormatError, innermost_message
from pairdata.rowcheck import BadValue, RowOrigin, column_type_error, first_bad_value
from pairdata.store import exclusive

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
READ_BATCH_ROWS = 10_000
TEXT_BLOCK_BYTES = 16 << 20  # JSON / CSV parse block: one record must fit in it
CONVERSION_VERSION = 1  # bump when the converted layout changes: older copies are not reused


@dataclass(frozen=True)
class FileSet:
    """Files of one format and the columns read from them.

    Args:
        files: the files, in order (rows keep this order).
        kind: ``json``, ``parquet``, ``csv`` or ``arrow``.
        schema: the columns read (the set's own names) and their types; a file that lacks an
            optional column gives nulls for it.
        roles: column -> ``x``, ``y``, ``negatives`` (a list column), ``negative`` (one string column of
            several) or ``source``: which check each column gets.
        label: how errors name the whole set.
    """

    files: tuple[str, ...]
    kind: str
    schema: pa.Schema
    roles: Mapping[str, str]
    label: str

    @classmethod
    def open(
        cls,
        files: Sequence[str],
        kind: str,
        roles: Mapping[str, str],
        required: Sequence[str],
        label: str,
        first: tuple[str, Mapping[str, Any]] | None = None,
    ) -> FileSet:
        """The set of ``files``, reading the columns of ``roles`` (those in ``required`` must exist).

        Args:
            first: :func:`first_columns` of the files, when the caller has it already.

        Raises:
            DataFormatError: a file lacks a required column or holds a column of the wrong type.
        """
        import pyarrow as pa

        first, available = first or first_columns(files, kind)
        for column in required:
            if column not in available:
                raise DataFormatError(first, _missing(column, roles[column], list(available)))
        fields = []
        for column, role in roles.items():
            if column not in available:
                continue
            error = column_type_error(first, column, role, available[column])
            if error is not None:
                raise error
            fields.append(pa.field(column, _target_type(role, available[column])))
        fileset = cls(tuple(files), kind, pa.schema(fields), dict(roles), label)
        if kind != "json":  # JSON Lines carry no header: their columns are checked as they are read
            for path in files:
                fileset._check_columns(path, required)
        return fileset

    def _check_columns(self, path: str, required: Sequence[str]) -> None:
        columns = _file_columns(path, self.kind)
        if columns is None:  # an empty file
            return
        for column in required:
            if column not in columns:
                raise DataFormatError(path, _missing(column, self.roles[column], list(columns)))
        for column in self.schema.names:
            if column in columns:
                error = column_type_error(path, column, self.roles[column], columns[column])
                if error is not None:
                    raise error

    # ---- reading ---------------------------------------------------------------------------------

    def read(self, path: str, row_group: int | None = None) -> Iterator[pa.RecordBatch]:
        """The file's batches (or one Parquet row group's), with exactly :attr:`schema`'s columns.

        Raises:
            DataFormatError: the file cannot be read, naming it (and the line, for JSON Lines).
        """
        try:
            for batch in _format_batches(path, self.kind, self.schema, row_group):
                yield _conform(batch, self.schema, path)
        except DataFormatError:
            raise
        except Exception as error:  # pyarrow raises many types; name the file (and line) at fault
            if self.kind == "json":
                _locate_jsonl_error(path, self.schema)
            raise DataFormatError(path, f"could not be read as {self.kind} ({innermost_message(error)})") from None

    def check(self, batch: pa.RecordBatch) -> BadValue | None:
        """The first bad value of a batch of this set, or None."""
        texts = [c for c in self.schema.names if self.roles[c] in ("x", "y")]
        negatives = [c for c in self.schema.names if self.roles[c] in ("negatives", "negative")]
        return first_bad_value(batch, texts, negatives)

    def shards(self, by_row_group: bool) -> list[tuple[str, int | None]]:
        """Stream shards: each Parquet row group (``by_row_group``) or each file."""
        if self.kind != "parquet" or not by_row_group:
            return [(path, None) for path in self.files]
        import pyarrow.parquet as pq

        return [(path, group) for path in self.files for group in range(pq.ParquetFile(path).num_row_groups)]

    def origin(self, row: int, rows_per_file: Sequence[int]) -> RowOrigin:
        """Row ``row`` of the set (files concatenated in order) as its file, row and (JSON Lines) line."""
        for path, count in zip(self.files, rows_per_file, strict=True):
            if row < count:
                return self.origin_in(path, row)
            row -= count
        raise IndexError(f"row {row} lies past the set's {sum(rows_per_file)} rows")

    def origin_in(self, path: str, row: int) -> RowOrigin:
        return RowOrigin(path, row, _line_of_row(path, row) if self.kind == "json" else None)

    # ---- memory-mapped: one Arrow copy ----------------------------------------------------------

    def convert(self, cache_dir: str | None = None) -> tuple[datasets.Dataset, list[int]]:
        """The columns read as one memory-mapped Arrow file (converted once), and each file's row count."""
        import datasets

        folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "cpt-files" / self._key()
        if not (folder / "files.json").is_file():
            with exclusive(folder.with_name(f".{folder.name}.lock")):  # one process converts, the others wait
                if not (folder / "files.json").is_file():
                    self._write(folder)
        counts = json.loads((folder / "files.json").read_text())["rows"]
        return datasets.Dataset.from_file(str(folder / "data.arrow")), counts

    def _key(self) -> str:
        stats = []
        for path in self.files:
            status = os.stat(path)
            stats.append([os.path.realpath(path), status.st_size, status.st_mtime_ns])
        key = json.dumps([CONVERSION_VERSION, self.kind, self.schema.to_string(), stats])
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def _write(self, folder: Path) -> None:
        import pyarrow as pa

        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        counts = []
        try:
            with pa.OSFile(str(staging / "data.arrow"), "wb") as sink, pa.ipc.new_stream(sink, self.schema) as writer:
                for path in self.files:
                    rows = 0
                    for batch in self.read(path):
                        writer.write_batch(batch)
                        rows += batch.num_rows
                    counts.append(rows)
            (staging / "files.json").write_text(json.dumps({"files": list(self.files), "rows": counts}))
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ---- streamed --------------------------------------------------------------------------------

    def stream(self, by_row_group: bool = True) -> datasets.IterableDataset:
        """The set as an ``IterableDataset`` of :meth:`shards`, each batch checked as it is read."""
        import datasets

        return datasets.IterableDataset.from_generator(
            _stream_rows,
            features=datasets.Features.from_arrow_schema(self.schema),
            gen_kwargs={"shards": self.shards(by_row_group), "fileset": self},
        )

    def row_offset(self, path: str, row_group: int | None) -> int:
        """Rows of ``path`` before ``row_group`` (0 for a whole file)."""
        if not row_group:
            return 0
        import pyarrow.parquet as pq

        metadata = pq.ParquetFile(path).metadata
        return sum(metadata.row_group(index).num_rows for index in range(row_group))


def _stream_rows(shards: Sequence[tuple[str, int | None]], fileset: FileSet) -> Iterator[dict[str, Any]]:
    """Rows of ``shards`` in order; a bad value stops the stream at its row with one line naming it."""
    for path, row_group in shards:
        offset = fileset.row_offset(path, row_group)
        for batch in fileset.read(path, row_group):
            bad = fileset.check(batch)
            if bad is not None:
                yield from batch.slice(0, bad.row).to_pylist()
                raise fileset.origin_in(path, offset + bad.row).error(bad)
            yield from batch.to_pylist()
            offset += batch.num_rows


def expand_files(path: str | Sequence[str]) -> list[str]:
    """Files named by a path, folder or glob (or a list of them), sorted within each entry."""
    import glob

    entries = [path] if isinstance(path, str) else list(path)
    if not entries:
        raise FileNotFoundError("data.path names no files")
    files: list[str] = []
    for entry in entries:
        expanded = str(Path(entry).expanduser())
        if Path(expanded).is_dir():
            found = sorted(str(p) for p in Path(expanded).rglob("*") if p.is_file() and suffix(p.name) in FILE_FORMATS)
        else:
            found = sorted(glob.glob(expanded, recursive=True))
        if not found:
            raise FileNotFoundError(f"data.path={entry!r} matches no files (formats: {sorted(FILE_FORMATS)}, .gz too)")
        files.extend(found)
    return files


def format_of(files: Sequence[str]) -> str:
    """The one format of ``files``, from their extensions."""
    kinds = {FILE_FORMATS.get(suffix(f)) for f in files}
    if None in kinds:
        unknown = next(f for f in files if suffix(f) not in FILE_FORMATS)
        raise DataFormatError(
            unknown, f"unknown file type; known: {sorted(FILE_FORMATS)} (optionally .gz), or set data.format"
        )
    if len(kinds) > 1:
        raise DataFormatError(files[0], f"data.path mixes formats {sorted(kinds)}; give one format per dataset")
    return kinds.pop()


def suffix(name: str) -> str:
    """A file's format extension, ignoring a trailing ``.gz``."""
    return Path(name.lower().removesuffix(".gz")).suffix


# ---- formats ------------------------------------------------------------------------------------------


def _format_batches(
    path: str, kind: str, schema: pa.Schema, row_group: int | None
) -> Iterator[pa.RecordBatch | pa.Table]:
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path, pre_buffer=False)
        present = [name for name in schema.names if name in parquet.schema_arrow.names]
        groups = range(parquet.num_row_groups) if row_group is None else [row_group]
        for group in groups:  # one row group at a time: memory bounded by a row group, not the file
            yield from parquet.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group], columns=present)
    elif kind == "arrow":
        with pa.memory_map(path, "r") as source:
            reader = _arrow_reader(source)
            for batch in reader:
                yield batch.select([name for name in schema.names if name in batch.schema.names])
    elif kind == "csv":
        import pyarrow.csv as pacsv

        if _is_empty(path):
            return
        present = [name for name in schema.names if name in (_file_columns(path, kind) or {})]
        convert = pacsv.ConvertOptions(include_columns=present, column_types={name: pa.string() for name in present})
        with pa.input_stream(path, compression="detect") as stream:
            yield from pacsv.open_csv(stream, pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES), convert_options=convert)
    else:
        yield from _json_batches(path, schema)


def _json_batches(path: str, schema: pa.Schema) -> Iterator[pa.RecordBatch | pa.Table]:
    import pyarrow as pa
    import pyarrow.json as pajson

    if _is_empty(path):
        return
    if _first_character(path) == "[":  # one JSON array, not JSON Lines: read whole (its size bounds memory)
        with _open_text(path) as handle:
            records = json.load(handle)
        yield pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in records], schema=schema)
        return
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with pa.input_stream(path, compression="detect") as stream:
        yield from pajson.open_json(stream, pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES), parse_options=options)


def _arrow_reader(source: Any) -> Iterator[pa.RecordBatch]:
    """An Arrow IPC stream (what ``datasets`` writes) or an IPC file (Feather v2)."""
    import pyarrow as pa

    try:
        return iter(pa.ipc.open_stream(source))
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        return (reader.get_batch(index) for index in range(reader.num_record_batches))


def _conform(batch: pa.RecordBatch | pa.Table, schema: pa.Schema, path: str) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns and types (a missing optional column as nulls)."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else pa.RecordBatch.from_pylist([], schema)
    arrays = []
    for target in schema:
        index = batch.schema.get_field_index(target.name)
        if index < 0:
            arrays.append(pa.nulls(batch.num_rows, target.type))
            continue
        column = batch.column(index)
        if column.type != target.type:
            try:
                column = column.cast(target.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                message = f"column {target.name!r} cannot be read as {target.type}: {error}"
                raise DataFormatError(path, message) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def first_columns(files: Sequence[str], kind: str) -> tuple[str, dict[str, Any]]:
    """The first non-empty file and its columns with their types."""
    for path in files:
        columns = _file_columns(path, kind)
        if columns is not None:
            return path, columns
    label = files[0] if len(files) == 1 else f"{len(files)} {kind} files ({files[0]}, ...)"
    raise DataFormatError(label, "holds no rows")


def _file_columns(path: str, kind: str) -> dict[str, Any] | None:
    """A file's columns and their types (JSON Lines: inferred from its first block); None when it is empty."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        elif kind == "arrow":
            with pa.memory_map(path, "r") as source:
                schema = pa.ipc.open_stream(source).schema if _is_stream(source) else pa.ipc.open_file(source).schema
        elif _is_empty(path):
            return None
        elif kind == "csv":
            import pyarrow.csv as pacsv

            with pa.input_stream(path, compression="detect") as stream:
                names = pacsv.open_csv(stream, pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES)).schema.names
            return dict.fromkeys(names, pa.string())
        else:
            schema = _json_schema(path)
    except DataFormatError:
        raise
    except Exception as error:
        if kind == "json":
            _locate_jsonl_error(path, None)
        raise DataFormatError(path, f"could not be read as {kind} ({innermost_message(error)})") from None
    return {name: schema.field(name).type for name in schema.names}


def _json_schema(path: str) -> pa.Schema:
    import pyarrow as pa
    import pyarrow.json as pajson

    if _first_character(path) == "[":
        with _open_text(path) as handle:
            return pa.Table.from_pylist(json.load(handle)[:1000]).schema
    with pa.input_stream(path, compression="detect") as stream:
        reader = pajson.open_json(stream, pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES))
        return reader.schema


def _is_stream(source: Any) -> bool:
    import pyarrow as pa

    try:
        pa.ipc.open_stream(source)
        return True
    except pa.ArrowInvalid:
        return False
    finally:
        source.seek(0)


def _target_type(role: str, found: Any) -> Any:
    """The type a column is read as: strings for texts, lists of strings for a negatives list column."""
    import pyarrow as pa

    if role == "negatives" and (pa.types.is_list(found) or pa.types.is_large_list(found)):
        return pa.list_(pa.string())
    if role == "negatives" and pa.types.is_null(found):
        return pa.list_(pa.string())
    return pa.string() if role in ("x", "y", "negative", "source") else found


def _missing(column: str, role: str, available: list[str]) -> str:
    ours = "negatives" if role == "negative" else role
    return (
        f"has no column {column!r} (for {ours!r}); its columns are {available}. Map them with data.columns.{ours}=NAME"
    )


# ---- JSON Lines: lines, and the line at fault -------------------------------------------------------


def _line_of_row(path: str, row: int) -> int | None:
    """The 1-based line of a JSON Lines file's ``row``-th record (blank lines hold none)."""
    from pairdata.pairs import _read_lines

    seen = -1
    for number, raw in enumerate(_read_lines(Path(path)), start=1):
        if raw.strip():
            seen += 1
            if seen == row:
                return number
    return None


def _locate_jsonl_error(path: str, schema: pa.Schema | None) -> None:
    """Re-read a JSON Lines file line by line to raise an error naming the line at fault (not JSON, not
    UTF-8, not decompressable, or a value of our columns of the wrong type); returns when none is found."""
    import pyarrow as pa

    from pairdata.pairs import iter_jsonl

    try:
        if _first_character(path) == "[":
            return
    except (OSError, EOFError, zlib.error):
        pass  # iter_jsonl names the line it cannot decompress
    for number, record in iter_jsonl(path):
        for target in schema or ():
            value = record.get(target.name)
            expects_list = pa.types.is_list(target.type)
            fits = value is None or (
                isinstance(value, list) and all(isinstance(v, str) or v is None for v in value)
                if expects_list
                else isinstance(value, str)
            )
            if not fits:
                kind = "lists of strings" if expects_list else "strings"
                raise DataFormatError(path, f"column {target.name!r} must hold {kind}, got {value!r:.80}", line=number)


def _is_empty(path: str) -> bool:
    return _first_character(path) == ""


def _first_character(path: str) -> str:
    """The file's first non-whitespace character ('' for an empty file)."""
    with _open_binary(path) as handle:
        while chunk := handle.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return chr(stripped[0])
    return ""


def _open_binary(path: str) -> Any:
    if path.lower().endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115  (returned to a with block)


def _open_text(path: str) -> Any:
    import io

    return io.TextIOWrapper(_open_binary(path), encoding="utf-8")

"""Pair files read a batch at a time: bad data named in one line (file, row, column), streams split by
row group so each row is read once across processes, and the row check run once per set."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairdata import DataFormatError
from pairdata.trainsets import load_files


def rows(count: int, start: int = 0) -> list[dict]:
    return [{"query": f"query {i}", "positive": f"document {i}", "id": i} for i in range(start, start + count)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def invalid_utf8(folder: Path) -> tuple[Path, str]:
    queries = [r["query"].encode() for r in rows(60)]
    queries[37] = b"caf\xe9 au lait"  # Latin-1 bytes in a column Parquet calls a string
    table = pa.table(
        {"query": pa.array(queries, pa.binary()).view(pa.string()), "positive": [r["positive"] for r in rows(60)]}
    )
    pq.write_table(table, folder / "latin1.parquet", row_group_size=16)
    return folder / "latin1.parquet", "row 37: column 'query' holds text that is not valid UTF-8"


def bad_row_in_second_parquet(folder: Path) -> tuple[Path, str]:
    (folder / "two").mkdir()
    pq.write_table(pa.Table.from_pylist(rows(30)), folder / "two" / "a.parquet")
    second = rows(30, 30)
    second[12]["positive"] = "  "
    pq.write_table(pa.Table.from_pylist(second), folder / "two" / "b.parquet")
    return folder / "two" / "b.parquet", "row 12: column 'positive' must be a non-empty string, got '  '"


def bad_row_in_second_jsonl(folder: Path) -> tuple[Path, str]:
    (folder / "lines").mkdir()
    write_jsonl(folder / "lines" / "a.jsonl", rows(30))
    second = rows(30, 30)
    second[4]["query"] = None
    path = folder / "lines" / "b.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in second[:2]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in second[2:])
    )
    return path, ":6: row 4: column 'query' must be a non-empty string, got None"  # a blank line before it


def column_missing_in_second_file(folder: Path) -> tuple[Path, str]:
    (folder / "renamed").mkdir()
    pq.write_table(pa.Table.from_pylist(rows(30)), folder / "renamed" / "a.parquet")
    renamed = [{"q": r["query"], "positive": r["positive"]} for r in rows(30, 30)]
    pq.write_table(pa.Table.from_pylist(renamed), folder / "renamed" / "b.parquet")
    return folder / "renamed" / "b.parquet", "has no column 'query' (for 'x'); its columns are ['q', 'positive']"


def empty_jsonl(folder: Path) -> tuple[Path, str]:
    (folder / "empty.jsonl").write_text("")
    return folder / "empty.jsonl", "holds no rows"


CASES = [invalid_utf8, bad_row_in_second_parquet, bad_row_in_second_jsonl, column_missing_in_second_file, empty_jsonl]


@pytest.mark.parametrize("streaming", [False, True], ids=["memory-mapped", "streamed"])
@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_bad_data_is_one_line_naming_the_file_row_and_column(tmp_path, case, streaming: bool) -> None:
    path, expected = case(tmp_path)
    given = path.parent if path.parent != tmp_path else path  # the folder of several files, or the one file
    with pytest.raises(DataFormatError) as caught:
        dataset = load_files(str(given), columns={"x": "query", "y": "positive"}, streaming=streaming)
        list(dataset)  # a stream meets its bad row while read
    message = str(caught.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message, message


def test_a_stream_stops_at_its_bad_row_after_yielding_every_row_before_it(tmp_path) -> None:
    path, _ = bad_row_in_second_parquet(tmp_path)
    stream = load_files(str(path.parent), columns={"x": "query", "y": "positive"}, streaming=True)
    seen = []
    with pytest.raises(DataFormatError, match="b.parquet: row 12"):
        for row in stream:
            seen.append(row["x"])
    assert seen == [f"query {i}" for i in range(42)]


def stream_rows_per_process(path: Path, processes: int) -> list[list[str]]:
    from train.data import split_stream

    stream = load_files(str(path), columns={"x": "query", "y": "positive"}, streaming=True)
    return [[row["x"] for row in split_stream(stream, "set", rank, processes)] for rank in range(processes)]


@pytest.mark.parametrize("processes", [2, 3])
def test_a_stream_of_five_row_groups_is_read_once_across_processes(tmp_path, processes: int) -> None:
    (tmp_path / "set").mkdir()
    pq.write_table(pa.Table.from_pylist(rows(30)), tmp_path / "set" / "a.parquet", row_group_size=10)  # 3 groups
    pq.write_table(pa.Table.from_pylist(rows(14, 30)), tmp_path / "set" / "b.parquet", row_group_size=10)  # 2
    parts = stream_rows_per_process(tmp_path / "set", processes)
    assert all(parts)
    everything = [row for part in parts for row in part]
    assert sorted(everything) == sorted(f"query {i}" for i in range(44))  # each row once: no process reads another's


def test_a_stream_with_fewer_shards_than_processes_is_refused_with_the_fix(tmp_path) -> None:
    (tmp_path / "set").mkdir()
    for name, start in (("a", 0), ("b", 10)):
        write_jsonl(tmp_path / "set" / f"{name}.jsonl", rows(10, start))
    assert sorted(sum(stream_rows_per_process(tmp_path / "set", 2), [])) == sorted(f"query {i}" for i in range(20))
    with pytest.raises(ValueError, match="2 shard\\(s\\) for 3 processes.*split -n l/N"):
        stream_rows_per_process(tmp_path / "set", 3)


def test_the_full_row_check_runs_once_per_set_and_again_when_a_file_changes(tmp_path, monkeypatch) -> None:
    import pairdata.rowcheck as rowcheck

    scanned = []
    real = rowcheck.first_bad_value
    monkeypatch.setattr(
        rowcheck, "first_bad_value", lambda batch, *a: scanned.append(batch.num_rows) or real(batch, *a)
    )
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows(40)), path)
    columns = {"x": "query", "y": "positive"}
    first = load_files(str(path), columns=columns)
    assert sum(scanned) == 40
    again = load_files(str(path), columns=columns)  # a restart: the verdict is kept
    assert sum(scanned) == 40 and again[:] == first[:]
    changed = rows(40)
    changed[5]["positive"] = ""
    pq.write_table(pa.Table.from_pylist(changed), path)
    with pytest.raises(DataFormatError, match="row 5: column 'positive'"):
        load_files(str(path), columns=columns)


def test_the_arrow_copy_holds_only_the_mapped_columns_in_file_order(tmp_path) -> None:
    (tmp_path / "set").mkdir()
    pq.write_table(pa.Table.from_pylist(rows(25)), tmp_path / "set" / "a.parquet", row_group_size=7)
    extra = [{**r, "unused": [1, 2]} for r in rows(5, 25)]  # an extra column in one file is not read
    pq.write_table(pa.Table.from_pylist(extra), tmp_path / "set" / "b.parquet")
    dataset = load_files(str(tmp_path / "set"), columns={"x": "query", "y": "positive"})
    assert dataset.column_names == ["x", "y"]
    assert dataset["x"] == [f"query {i}" for i in range(30)]
    assert len(dataset.cache_files) == 1

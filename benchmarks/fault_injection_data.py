"""Fault injection on the data path: each bad-data case of issue 41 run through the real training CLI.

Every case is a small set of real files with one fault, trained on with the tiny random decoder,
memory-mapped and streamed. What must hold: the run stops with one line naming the file, the row
(and line, for JSON Lines) and the column; memory-mapped before step 1, streamed at the bad row
(the steps before it run); never a traceback.

Usage:
    python benchmarks/fault_injection_data.py         # about 2 min on 2 cores
(``benchmarks/fault_injection.py`` runs these cases too, after its server cases.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BATCH = 8


@dataclass(frozen=True)
class DataCase:
    """One fault: ``make(folder)`` writes the set and returns (the path to train on, the file at fault,
    what the error must say, the stream row of the fault: the streamed run completes the steps before it)."""

    name: str
    make: Callable[[Path], tuple[Path, Path, str, int | None]]


def _rows(count: int, start: int = 0) -> list[dict]:
    return [{"query": f"how to sort list {i} by key", "positive": f"sorted(items_{i}, key=f)"} for i in
            range(start, start + count)]  # fmt: skip


def _parquet(path: Path, records: list[dict], **options: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, **options)
    return path


def invalid_utf8(folder: Path) -> tuple[Path, Path, str, int | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    queries = [r["query"].encode() for r in _rows(80)]
    queries[61] = b"caf\xe9 au lait"  # Latin-1 bytes where Parquet promises UTF-8
    texts = pa.array(queries, pa.binary()).view(pa.string())
    path = folder / "latin1.parquet"
    pq.write_table(pa.table({"query": texts, "positive": [r["positive"] for r in _rows(80)]}), path)
    return path, path, "row 61: column 'query' holds text that is not valid UTF-8", 61


def bad_row_in_the_second_file(folder: Path) -> tuple[Path, Path, str, int | None]:
    (folder / "two").mkdir()
    _parquet(folder / "two" / "a.parquet", _rows(40))
    second = _rows(40, 40)
    second[12]["positive"] = "   "
    bad = _parquet(folder / "two" / "b.parquet", second)
    return folder / "two", bad, "row 12: column 'positive' must be a non-empty string", 52


def bad_line_in_the_second_jsonl(folder: Path) -> tuple[Path, Path, str, int | None]:
    (folder / "lines").mkdir()
    (folder / "lines" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(40)))
    second = _rows(40, 40)
    second[20]["query"] = None
    bad = folder / "lines" / "b.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in second))
    return folder / "lines", bad, ":21: row 20: column 'query' must be a non-empty string, got None", 60


def column_missing_in_the_second_file(folder: Path) -> tuple[Path, Path, str, int | None]:
    (folder / "renamed").mkdir()
    _parquet(folder / "renamed" / "a.parquet", _rows(40))
    bad = _parquet(folder / "renamed" / "b.parquet", [{"q": r["query"], "positive": r["positive"]} for r in _rows(40)])
    return folder / "renamed", bad, "has no column 'query' (for 'x')", None  # found from the footers, before step 1


def empty_jsonl(folder: Path) -> tuple[Path, Path, str, int | None]:
    path = folder / "empty.jsonl"
    path.write_text("")
    return path, path, "holds no rows", None


CASES = [
    DataCase("invalid UTF-8 inside a Parquet string", invalid_utf8),
    DataCase("a bad row in the second of two Parquet files", bad_row_in_the_second_file),
    DataCase("a null text in the second of two JSONL files", bad_line_in_the_second_jsonl),
    DataCase("a column missing in the second file", column_missing_in_the_second_file),
    DataCase("an empty .jsonl", empty_jsonl),
]


def train_on(path: Path, streaming: bool, run_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "train/contrastive.py", "model=tiny-random", "trainer=tiny", "logging=none",
               "data=files", f"data.path={path}", "data.columns.x=query", "data.columns.y=positive",
               f"data.streaming={str(streaming).lower()}", "trainer.steps=12", f"trainer.batch_size={BATCH}",
               "trainer.val_pairs=0", "trainer.eval_every=0", "trainer.log_every=1",
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def run_case(case: DataCase, streaming: bool, work: Path) -> dict:
    folder = work / f"{case.make.__name__}-{'stream' if streaming else 'mmap'}"
    folder.mkdir(parents=True)
    path, at_fault, expected, stream_row = case.make(folder)
    done = train_on(path, streaming, folder / "run")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if str(at_fault) in line]
    metrics = folder / "run" / "metrics.jsonl"
    steps = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    expected_steps = (stream_row // BATCH) if streaming and stream_row is not None else 0
    names_it = any(expected in line for line in error_lines)
    return {
        "case": case.name,
        "mode": "streamed" if streaming else "memory-mapped",
        "exit": done.returncode,
        "traceback": "Traceback" in done.stderr,
        "steps": steps,
        "expected_steps": expected_steps,
        "message": (error_lines[-1] if error_lines else (lines[-1] if lines else ""))[-220:],
        "ok": done.returncode != 0 and names_it and "Traceback" not in done.stderr and steps == expected_steps,
    }


def run_data_cases(work: Path) -> list[dict]:
    """Every case, memory-mapped then streamed; one result per run."""
    return [run_case(case, streaming, work) for case in CASES for streaming in (False, True)]


def print_table(results: list[dict]) -> None:
    print("| bad data | mode | exit | steps run (expected) | traceback | error line | ok |")
    print("|---|---|---:|---:|---|---|---|")
    for r in results:
        message = r["message"].replace("|", "\\|")
        print(f"| {r['case']} | {r['mode']} | {r['exit']} | {r['steps']} ({r['expected_steps']}) | "
              f"{'yes' if r['traceback'] else 'no'} | `{message}` | {'yes' if r['ok'] else '**no**'} |")  # fmt: skip
    print(f"\n{sum(not r['ok'] for r in results)} failures of {len(results)} runs")


def main() -> None:
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as folder:
        print_table(run_data_cases(Path(folder)))
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

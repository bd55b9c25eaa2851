"""The on-disk layout of a built dataset and its all-or-nothing publication.

A dataset ``NAME`` lives in ``DATA_DIR/NAME/``: one ``SPLIT.jsonl.gz`` per split (readable by
``datasets.load_dataset("json", data_files=...)`` and by :func:`pairdata.pairs.iter_jsonl`) and a
``manifest.json`` written last. A build works in ``DATA_DIR/.NAME.partial/`` and renames it to
``NAME`` only when every file is complete, so an interrupted build never leaves a folder that
looks finished; the partial folder keeps finished per-source extractions so a rerun resumes.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "manifest.json"


def dataset_dir(data_dir: str | Path, name: str) -> Path:
    """The folder of a complete dataset."""
    return Path(data_dir).expanduser() / name


def partial_dir(data_dir: str | Path, name: str) -> Path:
    """The work folder of an unfinished build of ``name``."""
    return Path(data_dir).expanduser() / f".{name}.partial"


def is_complete(data_dir: str | Path, name: str) -> bool:
    """True when ``name`` was fully built (its manifest exists)."""
    return (dataset_dir(data_dir, name) / MANIFEST).is_file()


def read_manifest(data_dir: str | Path, name: str) -> dict:
    """The manifest of a complete dataset."""
    return json.loads((dataset_dir(data_dir, name) / MANIFEST).read_text(encoding="utf-8"))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs, so of the processes
    that start together one does a one-time job (a conversion, a scan) and the others wait and reuse it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_jsonl_gz(path: Path, records: Iterable[dict]) -> int:
    """Write records as gzipped JSON lines through a temporary file; returns the record count."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False))
            handle.write("\n")
            count += 1
    os.replace(tmp, path)
    return count


def read_jsonl_gz(path: Path) -> list[dict]:
    """Read a file written by :func:`write_jsonl_gz`."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def publish(data_dir: str | Path, name: str, manifest: dict) -> Path:
    """Write the manifest into the partial folder and atomically rename it to the dataset folder.

    A previous complete build of ``name`` is moved aside first and deleted after the rename.
    """
    work = partial_dir(data_dir, name)
    final = dataset_dir(data_dir, name)
    shutil.rmtree(work / "extract", ignore_errors=True)
    tmp = work / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, work / MANIFEST)
    replace_folder(work, final)
    return final


def replace_folder(new: Path, final: Path) -> None:
    """Put the complete folder ``new`` at ``final``: a previous ``final`` is moved aside first, deleted after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{int(time.time())}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

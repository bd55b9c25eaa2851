"""Embedding matrices on disk, written and read a block at a time (mining and evaluation share these).

:func:`embed_to_disk` writes ``count`` embeddings into a memory-mapped ``.npy`` file a chunk of
texts at a time (resumable after a kill); :class:`NpyRows` reads and writes row ranges of such a
file without a memory map. Searching them is :func:`eval.search.top_candidates`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pairdata.progress import progress
from pairdata.store import write_text_atomic

DTYPES = {"float16": np.float16, "float32": np.float32}


def embed_to_disk(
    path: Path,
    count: int,
    texts_at: Callable[[int, int], list[str]],
    encode: Callable[[list[str]], np.ndarray],
    chunk: int,
    show_progress: bool,
    desc: str,
    dtype: str = "float16",
) -> np.ndarray:
    """``count`` embeddings in a ``dtype`` ``.npy`` file, encoded ``chunk`` texts at a time.

    An interrupted run continues after the last chunk it finished (counted in ``PATH.done``).
    Returns the memory map (read-only).
    """
    if dtype not in DTYPES:
        raise ValueError(f"embedding dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    done_file = path.with_suffix(".done")
    done = int(done_file.read_text()) if done_file.is_file() and path.is_file() else 0
    rows = None
    starts = range(done, count, chunk)
    for start in progress(starts, enabled=show_progress, desc=desc, unit="chunk", total=len(starts)):
        end = min(count, start + chunk)
        vectors = np.ascontiguousarray(encode(texts_at(start, end)), dtype=DTYPES[dtype])
        if rows is None:
            if not path.is_file():  # the header and a sparse file of the full size
                np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[dtype], shape=(count, vectors.shape[1]))
            rows = NpyRows(path)
        rows.write(start, vectors)
        write_text_atomic(done_file, str(end))
    if not path.is_file():  # nothing to encode
        np.save(path, np.zeros((0, 1), dtype=DTYPES[dtype]))
    return np.load(path, mmap_mode="r")


def contiguous_rows(rows: slice, count: int, what: str) -> tuple[int, int]:
    """``(start, stop)`` of a step-1 slice over ``count`` rows (the only reads an on-disk matrix serves)."""
    start, stop, step = rows.indices(count)
    if step != 1:
        raise IndexError(f"{what} reads contiguous row ranges only")
    return start, max(start, stop)


class NpyRows:
    """Row ranges of a 2-D ``.npy`` file read and written with ``pread``/``pwrite``, not a memory map.

    A memory map keeps every page it touched resident, so reading a matrix larger than RAM through
    one makes the process's RSS grow to the page cache's size; explicit reads leave the page cache
    to the kernel and hold only the block asked for.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(handle)
            self.offset = handle.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = contiguous_rows(rows, self.shape[0], "NpyRows")
        count = stop - start
        with self.path.open("rb") as handle:
            data = os.pread(handle.fileno(), count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(count, self.shape[1])

    def write(self, start: int, vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.shape[1] or start + len(vectors) > self.shape[0]:
            raise ValueError(
                f"{self.path}: rows {start}+{len(vectors)} of width {vectors.shape[1]} do not fit {self.shape}"
            )
        with self.path.open("r+b") as handle:
            os.pwrite(handle.fileno(), np.ascontiguousarray(vectors, self.dtype).tobytes(),
                      self.offset + start * self.row_bytes)  # fmt: skip
            os.fsync(handle.fileno())

"""Embedding matrices on disk and exact top-k over them, a block at a time (mining and evaluation share these).

:func:`embed_to_disk` writes ``count`` embeddings into a memory-mapped ``.npy`` file a chunk of
texts at a time (resumable after a kill); :func:`top_candidates` keeps a running top-k per query
while it reads the candidate matrix in row blocks, so neither needs the matrix in RAM.
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


def top_candidates(
    queries: np.ndarray,
    pool: np.ndarray,
    depth: int,
    pool_chunk: int,
    exclude: np.ndarray | None = None,
    pool_offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``depth`` pool rows per query by inner product: (scores, indices), best first.

    Args:
        queries: (Q, D) query vectors.
        pool: (N, D) candidates, any array that slices into row blocks (a memory map, a stack of them).
        depth: hits kept per query (at most N).
        pool_chunk: pool rows scored per block: memory is about Q x pool_chunk floats.
        exclude: (Q,) a pool row per query that must not be returned (its own document), -1 for none.
        pool_offset: added to the returned indices (the pool is a slice of a larger one).
    """
    import torch

    q = torch.from_numpy(np.asarray(queries, dtype=np.float32))
    own = None if exclude is None else torch.from_numpy(np.asarray(exclude, dtype=np.int64))
    best_scores = torch.full((len(q), 0), float("-inf"))
    best_index = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(pool), pool_chunk):
        block = torch.from_numpy(np.asarray(pool[start : start + pool_chunk], dtype=np.float32))
        block_scores = q @ block.T  # (Q, chunk): the only matrix that grows with pool_chunk
        if own is not None:
            rows = torch.nonzero((own >= start) & (own < start + len(block))).flatten()
            block_scores[rows, own[rows] - start] = float("-inf")
        # the block's own top-k first, then merged with the running top-k: (Q, 2k), never (Q, k + chunk)
        top_scores, top_where = block_scores.topk(min(depth, block_scores.shape[1]), dim=1)
        scores = torch.cat([best_scores, top_scores], dim=1)
        index = torch.cat([best_index, top_where + start], dim=1)
        best_scores, where = scores.topk(min(depth, scores.shape[1]), dim=1)
        best_index = index.gather(1, where)
        del block_scores
    return best_scores.numpy(), best_index.numpy() + pool_offset

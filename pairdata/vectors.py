"""Embedding matrices on disk and exact top-k over them, a block at a time (mining and evaluation share these).

:func:`embed_to_disk` writes ``count`` embeddings into a memory-mapped ``.npy`` file a chunk of
texts at a time (resumable after a kill); :func:`top_candidates` keeps a running top-k per query
while it reads the candidate matrix in row blocks, so neither needs the matrix in RAM.
"""

from __future__ import annotations

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
    array = None
    starts = range(done, count, chunk)
    for start in progress(starts, enabled=show_progress, desc=desc, unit="chunk", total=len(starts)):
        end = min(count, start + chunk)
        vectors = encode(texts_at(start, end)).astype(DTYPES[dtype])
        if array is None:
            mode = "r+" if path.is_file() else "w+"
            array = np.lib.format.open_memmap(path, mode=mode, dtype=DTYPES[dtype], shape=(count, vectors.shape[1]))
        array[start:end] = vectors
        array.flush()
        write_text_atomic(done_file, str(end))
    if not path.is_file():  # nothing to encode
        np.save(path, np.zeros((0, 1), dtype=DTYPES[dtype]))
    return np.load(path, mmap_mode="r")


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
        pool_chunk: pool rows scored per block: memory is about Q x (pool_chunk + depth) floats.
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
        block_scores = q @ block.T
        if own is not None:
            rows = torch.nonzero((own >= start) & (own < start + len(block))).flatten()
            block_scores[rows, own[rows] - start] = float("-inf")
        scores = torch.cat([best_scores, block_scores], dim=1)
        index = torch.cat([best_index, torch.arange(start, start + len(block)).expand(len(q), -1)], dim=1)
        keep = min(depth, scores.shape[1])
        best_scores, where = scores.topk(keep, dim=1)
        best_index = index.gather(1, where)
    return best_scores.numpy(), best_index.numpy() + pool_offset

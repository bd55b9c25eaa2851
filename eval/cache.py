"""The encoding step every benchmark goes through: de-duplication, sharding and the optional embedding cache.

Two paths:

* :meth:`Encoder.encode`: texts in memory (queries, STS pairs) -> an in-memory matrix. Each unique
  text is encoded once; with several processes (:class:`eval.distributed.Shards`) each encodes a
  contiguous share of the sorted unique texts and the shares are gathered.
* :meth:`Encoder.encode_corpus`: a corpus read from disk chunk by chunk -> a matrix read back from
  ``.npy`` files in row blocks (one file per process, written in chunks, resumable), so a corpus larger than RAM
  is encoded and searched without ever being in memory. The files sit in the cache when one is
  set, else in the run's work folder (deleted after the run).

Cache entries live under ``<cache_dir>/<model>/``, keyed by the source fingerprint (model files and
settings: sequence length, precision, prompts), the role and the exact texts, so a stale entry
cannot be returned. In-memory entries ignore the order of the texts and the caller's label, so
mteb's run of the same data hits our entries; corpus entries are keyed by the texts in file
order and the storage dtype, and any number of processes reads an entry any number wrote.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eval.distributed import Shards
from eval.sources import DenseSource, texts_digest
from pairdata.store import write_text_atomic
from pairdata.vectors import NpyRows, contiguous_rows, embed_to_disk

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


class Encoder:
    """Encodes texts with a dense source, once per unique text, through an optional disk cache.

    Args:
        source: the dense model source.
        model_name: the name used for the cache folder.
        cache_dir: the cache root; ``None`` disables caching.
        shards: this process's share of the work (one process by default).
        work_dir: where uncached corpus embeddings go (the same folder on every process);
            ``None``: a temporary folder (one process only).
    """

    def __init__(
        self,
        source: DenseSource,
        model_name: str,
        cache_dir: str | Path | None = None,
        shards: Shards | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        self.source = source
        self.model_name = model_name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.shards = shards or Shards()
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.task: str | None = None

    def for_task(self, task: str | None) -> Encoder:
        """This encoder for a benchmark's task text, when the source takes one (a checkpoint trained with a
        ``{task}`` instruction, ``takes_task``); otherwise, or for ``None``, this encoder unchanged. Embeddings
        are cached per task."""
        if task is None or not getattr(self.source, "takes_task", False):
            return self
        other = copy.copy(self)
        other.task = task
        return other

    def _key(self, role: str, digest: str) -> str:
        task = "" if self.task is None else f"|task={self.task}"
        return hashlib.sha256(f"{self.source.fingerprint()}|{role}|{digest}{task}".encode()).hexdigest()

    def _path(self, role: str, unique_sorted: Sequence[str]) -> Path:
        assert self.cache_dir is not None
        digest = texts_digest(unique_sorted)
        key = self._key(role, digest)
        return self.cache_dir / _slug(self.model_name) / f"{role}-{len(unique_sorted)}-{key[:24]}.npy"

    def encode(self, texts: Sequence[str], role: str, dataset: str) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of ``texts`` (row i for ``texts[i]``)."""
        unique = sorted(set(texts))  # sorted: the cache key must not depend on the callers' order
        position = {text: i for i, text in enumerate(unique)}
        vectors = None
        path = self._path(role, unique) if self.cache_dir else None
        if path is not None and path.is_file():
            vectors = np.load(path)
            if vectors.shape[0] != len(unique):
                logger.warning(
                    "cache entry %s has %d rows, expected %d; re-encoding",
                    path,
                    vectors.shape[0],
                    len(unique),
                )
                vectors = None
            else:
                logger.info("embeddings of %s (%s) read from cache %s", dataset, role, path)
        if vectors is None:
            logger.info("encoding %d unique texts of %s as %s", len(unique), dataset, role)
            start, end = self.shards.span(len(unique))
            vectors = self._encode(unique[start:end], role)
            if self.shards.world > 1:
                parts = [part for part in self.shards.gather(vectors) if part.shape[0]]
                vectors = np.concatenate(parts) if parts else vectors
            if vectors.shape[0] != len(unique):
                raise RuntimeError(f"encoded {vectors.shape[0]} rows for {len(unique)} texts")
            if path is not None and self.shards.is_main:
                _save_npy_atomic(path, vectors)
        return vectors[[position[text] for text in texts]]

    def _scratch(self) -> Path:
        """``work_dir``, else a temporary folder of this encoder's own, removed when it is garbage-collected."""
        if self.work_dir is None:
            if self.shards.world > 1:
                raise ValueError("several processes need a shared work_dir for corpus embeddings (or a cache_dir)")
            self.work_dir = Path(tempfile.mkdtemp(prefix="cpt-eval-"))
            weakref.finalize(self, shutil.rmtree, self.work_dir, True)
        return self.work_dir

    def _encode(self, texts: list[str], role: str) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        task = {} if self.task is None else {"task": self.task}
        vectors = np.asarray(self.source.encode(texts, role, **task), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise RuntimeError(f"source returned shape {vectors.shape} for {len(texts)} texts")
        return vectors

    def encode_corpus(self, corpus: Corpus, role: str, dataset: str, dtype: str = "float32", chunk: int = 8192,
                      show_progress: bool = False) -> RowStack:  # fmt: skip
        """(N, D) L2-normalised embeddings of ``corpus``'s rows, on disk (``dtype`` storage), read in row blocks.

        Each process encodes its contiguous share of the rows into its own ``.npy`` part, ``chunk``
        rows at a time (a killed run resumes after its last finished chunk); every process then reads
        all parts. An entry of the cache is complete once its ``entry.json`` exists.
        """
        self.shards.check(len(corpus), dataset)
        key = self._key(role, f"{corpus.digest}|{dtype}")
        if self.cache_dir is not None:
            folder = self.cache_dir / _slug(self.model_name) / f"{role}-{len(corpus)}-{key[:24]}"
        else:
            folder = self._scratch() / f"{_slug(dataset)}-{role}-{key[:16]}"
        entry = folder / "entry.json"
        if entry.is_file():
            logger.info("embeddings of %s (%s) read from %s", dataset, role, folder)
            return RowStack.open(entry)
        folder.mkdir(parents=True, exist_ok=True)
        start, end = self.shards.span(len(corpus))
        name = f"part-{self.shards.rank:03d}-of-{self.shards.world:03d}.npy"
        logger.info("encoding rows %d-%d of %s (%d documents) as %s into %s", start, end, dataset, len(corpus),
                    role, folder)  # fmt: skip
        embed_to_disk(folder / name, end - start, lambda a, b: corpus.texts(start + a, start + b),
                      lambda texts: self._encode(texts, role), chunk, show_progress and self.shards.is_main,
                      f"encode {dataset}", dtype)  # fmt: skip
        parts = self.shards.gather({"file": name, "start": start, "end": end})
        if self.shards.is_main:
            record = {"rows": len(corpus), "dtype": dtype, "role": role, "dataset": dataset,
                      "fingerprint": self.source.fingerprint(), "parts": parts}  # fmt: skip
            write_text_atomic(entry, json.dumps(record, indent=2))
        self.shards.barrier()
        return RowStack.open(entry)


class Corpus(Protocol):
    """Texts read from disk by row range (``eval.data.CorpusIndex``), with a digest of all of them."""

    digest: str

    def __len__(self) -> int: ...

    def texts(self, start: int, end: int) -> list[str]: ...


class RowStack:
    """Row blocks of several ``.npy`` parts (arrays or ``NpyRows``), read as one (N, D) float32 matrix."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = [part for part in parts if part.shape[0]]
        self.offsets = np.cumsum([0, *(part.shape[0] for part in self.parts)])
        width = self.parts[0].shape[1] if self.parts else 0
        self.shape = (int(self.offsets[-1]), width)

    @classmethod
    def open(cls, entry: Path) -> RowStack:
        record = json.loads(entry.read_text())
        parts = sorted(record["parts"], key=lambda part: part["start"])
        return cls([NpyRows(entry.parent / part["file"]) for part in parts])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = contiguous_rows(rows, self.shape[0], "RowStack")
        blocks = []
        for part, offset in zip(self.parts, self.offsets[:-1], strict=True):
            low, high = max(start - offset, 0), min(stop - offset, part.shape[0])
            if low < high:
                blocks.append(np.asarray(part[low:high], dtype=np.float32))
        return np.concatenate(blocks) if blocks else np.zeros((0, self.shape[1]), np.float32)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.save(file, array)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

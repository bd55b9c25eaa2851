"""The encoding step every benchmark goes through: de-duplication and the optional embedding cache.

Embeddings are cached per (model, dataset): one ``.npy`` per (source fingerprint, role, set of
texts) under ``<cache_dir>/<model>/``. The key covers the model files, its settings (sequence
length, precision, prompts) and the exact texts, so a stale entry cannot be returned; it ignores
the order of the texts and the caller's label, so mteb's run of the same data hits our entries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.sources import DenseSource, texts_digest

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "model"


class Encoder:
    """Encodes texts with a dense source, once per unique text, through an optional disk cache.

    Args:
        source: the dense model source.
        model_name: the name used for the cache folder.
        cache_dir: the cache root; ``None`` disables caching.
    """

    def __init__(self, source: DenseSource, model_name: str, cache_dir: str | Path | None = None) -> None:
        self.source = source
        self.model_name = model_name
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def _path(self, role: str, unique_sorted: Sequence[str]) -> Path:
        assert self.cache_dir is not None
        digest = texts_digest(unique_sorted)
        key = hashlib.sha256(f"{self.source.fingerprint()}|{role}|{digest}".encode()).hexdigest()
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
            vectors = np.asarray(self.source.encode(unique, role), dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] != len(unique):
                raise RuntimeError(f"source returned shape {vectors.shape} for {len(unique)} texts")
            if path is not None:
                _save_npy_atomic(path, vectors)
        return vectors[[position[text] for text in texts]]


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

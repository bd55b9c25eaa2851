"""Exact and near-duplicate detection over token sequences (MinHash + LSH, verified by Jaccard).

CodeSearchNet removed near-duplicate functions with Allamanis' detector (Jaccard similarity of
token sets); this module does the same with MinHash signatures to find candidates quickly and an
exact Jaccard check to confirm them. The first item seen of a duplicate cluster is kept, so the
result depends only on the input order.

References:
    Allamanis, "The Adverse Effects of Code Duplication in Machine Learning Models of Code",
    arXiv:1812.06469.  Husain et al., "CodeSearchNet Challenge", arXiv:1909.09436.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from pairdata.textnorm import stable_hash

_MASK_61 = np.uint64((1 << 61) - 1)


class DuplicateFilter:
    """Streaming filter: :meth:`check` says whether an item duplicates one already kept.

    Args:
        threshold: two items are near duplicates when the Jaccard similarity of their token sets
            is at least this (0.8 as in Allamanis' detector).
        num_perm: MinHash signature length.
        bands: LSH bands (``num_perm`` must divide by it); more bands find more candidates. With
            128 permutations in 16 bands of 8 rows a pair at Jaccard 0.8 becomes a candidate with
            probability 0.95, and one at 0.5 with probability 0.06.
        min_tokens: items with fewer distinct tokens are only checked for exact duplicates (near
            matching of tiny sets is noise).
        seed: seed of the MinHash permutations.
    """

    def __init__(
        self, threshold: float = 0.8, num_perm: int = 128, bands: int = 16, min_tokens: int = 5, seed: int = 1
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if num_perm % bands:
            raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
        rng = np.random.default_rng(seed)
        self.threshold = threshold
        self.bands = bands
        self.rows = num_perm // bands
        self.min_tokens = min_tokens
        self._a = rng.integers(1, 1 << 61, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 1 << 61, size=num_perm, dtype=np.uint64)
        self._exact: set[int] = set()
        self._buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self._sets: list[frozenset[int]] = []
        self._token_hash: dict[str, int] = {}
        self.exact_duplicates = 0
        self.near_duplicates = 0

    def _hashes(self, tokens: Iterable[str]) -> np.ndarray:
        cache = self._token_hash
        values = []
        for token in tokens:
            value = cache.get(token)
            if value is None:
                value = cache[token] = stable_hash(token)
            values.append(value)
        return np.unique(np.asarray(values, dtype=np.uint64))

    def check(self, tokens: list[str]) -> str | None:
        """Return ``"exact"`` or ``"near"`` for a duplicate, or ``None`` (and remember the item)."""
        key = stable_hash("\x1f".join(tokens))
        if key in self._exact:
            self.exact_duplicates += 1
            return "exact"
        token_set = self._hashes(tokens)
        bucket_keys: list[tuple[int, bytes]] = []
        if len(token_set) >= self.min_tokens:
            with np.errstate(over="ignore"):
                # (num_tokens, num_perm) universal hashes, wrapping in uint64 arithmetic
                mixed = (token_set[:, None] * self._a[None, :] + self._b[None, :]) & _MASK_61
            signature = mixed.min(axis=0)  # (num_perm,)
            bucket_keys = [
                (band, signature[band * self.rows : (band + 1) * self.rows].tobytes()) for band in range(self.bands)
            ]
            candidates = {index for bucket in bucket_keys for index in self._buckets.get(bucket, ())}
            members = frozenset(token_set.tolist())
            for index in sorted(candidates):
                other = self._sets[index]
                shared = len(members & other)
                if shared / (len(members) + len(other) - shared) >= self.threshold:
                    self.near_duplicates += 1
                    return "near"
        self._exact.add(key)
        if bucket_keys:
            index = len(self._sets)
            self._sets.append(members)
            for bucket in bucket_keys:
                self._buckets[bucket].append(index)
        return None

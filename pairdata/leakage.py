"""Benchmark leakage removal: texts of every evaluation set are hashed and never trained on.

:func:`benchmark_index` reads every text of a benchmark folder laid out like ``shared/data``
(SentEval's ``data/downstream`` files, BEIR corpus/queries jsonl, DBpedia-14 jsonl, and any other
jsonl or tab-separated text files added there). A training text leaks when

* its normalised form equals a benchmark text (any length),
* one of its sentences equals a benchmark sentence of at least ``sentence_min_words`` words, or
* it shares a ``ngram``-word sequence with a benchmark text (GPT-3's 13-gram contamination check,
  Brown et al., arXiv:2005.14165, appendix C).

Normalisation lower-cases and keeps only word characters, so tokenised copies (MR's ``it 's``)
match raw ones. The code test split is added with :meth:`LeakageIndex.add_exact` (whole texts and
sentences only: code shares boilerplate 13-grams too often to use them).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pairdata.errors import DataFormatError
from pairdata.pairs import iter_jsonl
from pairdata.textnorm import sentences, sha256_file, stable_hash, words

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_benchmark_dir() -> Path:
    """``$CPT_BENCHMARK_DIR``, else ``../shared/data`` beside the repository: the benchmark texts kept out."""
    import os

    return Path(os.environ.get("CPT_BENCHMARK_DIR", REPO_ROOT.parent / "shared" / "data")).expanduser()


_TREC_LABEL = re.compile(r"^[A-Z]+:\S+\s+")
_SKIP_NAMES = re.compile(r"^(license|readme|copying)|\.(md|py|sh|html?)$", re.IGNORECASE)
_JSON_TEXT_FIELDS = ("title", "text", "query", "sentence", "sentence1", "sentence2", "question", "answer")
MIN_FIELD_WORDS = 1  # labels and ids only ever match a whole text equal to them


class LeakageIndex:
    """Hashes of benchmark texts, their sentences and their word n-grams.

    Args:
        ngram: n-gram length for the overlap check.
        sentence_min_words: shorter sentences are matched only as whole texts.
    """

    def __init__(self, ngram: int = 13, sentence_min_words: int = 6) -> None:
        self.ngram = ngram
        self.sentence_min_words = sentence_min_words
        self._full: set[int] = set()
        self._sentences: set[int] = set()
        self._gram_chunks: list[np.ndarray] = []
        self._grams = np.zeros(0, dtype=np.uint64)
        self.texts = 0
        self.files: list[dict] = []

    def _add_sentences(self, text: str) -> None:
        for sentence in sentences(text):
            sentence_words = words(sentence)
            if len(sentence_words) >= self.sentence_min_words:
                self._sentences.add(stable_hash(" ".join(sentence_words)))

    def add(self, text: str) -> None:
        """Index a benchmark text: whole, by sentence and by n-gram."""
        text_words = words(text)
        if not text_words:
            return
        self.texts += 1
        self._full.add(stable_hash(" ".join(text_words)))
        self._add_sentences(text)
        if len(text_words) >= self.sentence_min_words:
            self._sentences.add(stable_hash(" ".join(text_words)))
        if len(text_words) >= self.ngram:
            self._gram_chunks.append(self._gram_hashes(text_words))

    def add_exact(self, text: str, by_sentence: bool = True) -> None:
        """Index a text whole, and by sentence unless ``by_sentence`` is false (the code test split:
        code lines such as ``for i in range(n):`` are shared by unrelated functions)."""
        text_words = words(text)
        if not text_words:
            return
        self.texts += 1
        self._full.add(stable_hash(" ".join(text_words)))
        if by_sentence:
            self._add_sentences(text)

    def _gram_hashes(self, text_words: list[str]) -> np.ndarray:
        return gram_hashes(text_words, self.ngram)

    def freeze(self) -> LeakageIndex:
        """Merge the n-gram hashes into one sorted array (call after the last ``add``)."""
        if self._gram_chunks:
            self._grams = np.unique(np.concatenate([self._grams, *self._gram_chunks]))
            self._gram_chunks = []
        return self

    def leaks(self, text: str) -> bool:
        """True when ``text`` contains a benchmark text (see the module docstring)."""
        if self._gram_chunks:
            self.freeze()
        text_words = words(text)
        if not text_words:
            return False
        if stable_hash(" ".join(text_words)) in self._full:
            return True
        if self._sentences:
            for sentence in sentences(text):
                sentence_words = words(sentence)
                if (
                    len(sentence_words) >= self.sentence_min_words
                    and stable_hash(" ".join(sentence_words)) in self._sentences
                ):
                    return True
        if self._grams.size and len(text_words) >= self.ngram:
            hashes = self._gram_hashes(text_words)
            positions = np.searchsorted(self._grams, hashes)
            positions[positions >= self._grams.size] = 0
            if np.any(self._grams[positions] == hashes):
                return True
        return False

    def summary(self) -> dict:
        return {
            "texts": self.texts,
            "ngram": self.ngram,
            "ngrams_indexed": int(self._grams.size),
            "sentence_min_words": self.sentence_min_words,
            "files": self.files,
        }


def gram_hashes(text_words: list[str], n: int) -> np.ndarray:
    """The stable hashes of every ``n``-word sequence of ``text_words`` (empty when shorter)."""
    return np.fromiter(
        (stable_hash(" ".join(text_words[i : i + n])) for i in range(len(text_words) - n + 1)),
        dtype=np.uint64,
    )


def _jsonl_texts(path: Path) -> Iterator[str]:
    for _, record in iter_jsonl(path):
        for key in _JSON_TEXT_FIELDS:
            value = record.get(key)
            if isinstance(value, str) and value.strip():
                yield value


def _line_texts(path: Path) -> Iterator[str]:
    text = path.read_bytes().decode("utf-8", errors="replace")
    for line in text.splitlines():
        for field in line.split("\t"):
            field = _TREC_LABEL.sub("", field.strip())
            if len(words(field)) >= MIN_FIELD_WORDS:
                yield field


def iter_benchmark_texts(root: str | Path) -> Iterator[tuple[Path, str]]:
    """``(file, text)`` for every benchmark text under ``root`` (qrels and licences skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "benchmark folder not found: pass --benchmark-dir (the shared/data folder)")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if "qrels" in path.parts or _SKIP_NAMES.search(path.name):
            continue
        name = path.name.removesuffix(".gz")
        reader = _jsonl_texts if name.endswith(".jsonl") else _line_texts
        for text in reader(path):
            yield path, text


def benchmark_index(root: str | Path, ngram: int = 13, sentence_min_words: int = 6) -> LeakageIndex:
    """A frozen :class:`LeakageIndex` of every benchmark text under ``root``."""
    index = LeakageIndex(ngram=ngram, sentence_min_words=sentence_min_words)
    per_file: Counter = Counter()
    for path, text in iter_benchmark_texts(root):
        index.add(text)
        per_file[path] += 1
    index.files = [
        {"path": str(path.relative_to(root)), "sha256": sha256_file(path), "texts": count}
        for path, count in sorted(per_file.items())
    ]
    return index.freeze()

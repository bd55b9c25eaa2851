"""Text normalisation, tokenisation and stable hashing shared by dedup, leakage and the builders.

Every hash here is a keyed-free 64-bit BLAKE2b digest, so the same text hashes to the same
integer in every process and on every machine (Python's ``hash`` is salted per process).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

WORD_RE = re.compile(r"\w+")
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def normalize(text: str) -> str:
    """Lower-cased NFKC words joined by single spaces: punctuation, case and spacing do not count."""
    return " ".join(WORD_RE.findall(unicodedata.normalize("NFKC", text).lower()))


def words(text: str) -> list[str]:
    """The normalised word list of ``text`` (what :func:`normalize` joins)."""
    return WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def tokenize_text(text: str) -> list[str]:
    """Word and single-punctuation tokens, the tokenisation used for ``docstring_tokens``."""
    return TOKEN_RE.findall(text)


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def sentences(text: str) -> list[str]:
    """Split on sentence punctuation and newlines (good enough to find a benchmark sentence)."""
    return [part for part in SENTENCE_SPLIT_RE.split(text) if part.strip()]


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Readers for files in SentEval's ``data/downstream`` layout (STS-B, SICK, MRPC, ...).

One place parses these files, for the training pair sources and for the evaluation harnesses.
"""

from __future__ import annotations

from pathlib import Path

from pairdata.errors import DataFormatError

STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
MRPC_FILES = {"train": "msr_paraphrase_train.txt", "test": "msr_paraphrase_test.txt"}


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataFormatError(
            path, "file not found: point data_root at a folder in SentEval's data/downstream layout"
        )
    return path.read_text(encoding="utf-8-sig").splitlines()


def read_sts_benchmark(root: str | Path, split: str) -> list[tuple[str, str, float]]:
    """STS-B ``(sentence1, sentence2, score in [0, 5])`` triples of one split.

    Args:
        root: the SentEval ``data/downstream`` folder (holds ``STS/STSBenchmark``).
        split: ``train``, ``dev`` or ``test``.
    """
    if split not in STSB_FILES:
        raise ValueError(f"unknown STS-B split {split!r}; expected one of {sorted(STSB_FILES)}")
    path = Path(root) / "STS" / "STSBenchmark" / STSB_FILES[split]
    triples = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 7:
            raise DataFormatError(path, f"expected >= 7 tab-separated columns, got {len(columns)}", number)
        try:
            score = float(columns[4])
        except ValueError:
            raise DataFormatError(path, f"score column is not a number: {columns[4]!r}", number) from None
        triples.append((columns[5], columns[6], score))
    return triples


def read_mrpc(root: str | Path, split: str) -> list[tuple[str, str, int]]:
    """MRPC ``(sentence1, sentence2, is_paraphrase)`` triples of one split (``train`` or ``test``)."""
    if split not in MRPC_FILES:
        raise ValueError(f"unknown MRPC split {split!r}; expected one of {sorted(MRPC_FILES)}")
    path = Path(root) / "MRPC" / MRPC_FILES[split]
    triples = []
    for number, line in enumerate(_lines(path), start=1):
        if number == 1 or not line.strip():  # header row
            continue
        columns = line.split("\t")
        if len(columns) != 5 or columns[0] not in {"0", "1"}:
            raise DataFormatError(path, "expected 'label<TAB>id1<TAB>id2<TAB>sentence1<TAB>sentence2'", number)
        triples.append((columns[3], columns[4], int(columns[0])))
    return triples

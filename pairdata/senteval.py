"""Readers for files in SentEval's ``data/downstream`` layout (STS-B, SICK, MRPC, ...).

One place parses these files, for the training pair sources and for the evaluation harnesses.
"""

from __future__ import annotations

from pathlib import Path

from pairdata.errors import DataFormatError

STSB_FILES = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
MRPC_FILES = {"train": "msr_paraphrase_train.txt", "test": "msr_paraphrase_test.txt"}


def _lines(path: Path, encoding: str = "utf-8-sig") -> list[str]:
    if not path.is_file():
        raise DataFormatError(path, "file not found: point data_root at a folder in SentEval's data/downstream layout")
    return path.read_text(encoding=encoding).splitlines()


def _scored_pairs(
    path: Path, header: bool, score_column: int, first_sentence: int, score_name: str
) -> list[tuple[str, str, float]]:
    """``(sentence, next column's sentence, float score)`` from each tab-separated row of ``path``."""
    needed = max(score_column, first_sentence + 1) + 1
    triples = []
    for number, line in enumerate(_lines(path), start=1):
        if (header and number == 1) or not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < needed:
            raise DataFormatError(path, f"expected >= {needed} tab-separated columns, got {len(columns)}", number)
        try:
            score = float(columns[score_column])
        except ValueError:
            message = f"{score_name} column is not a number: {columns[score_column]!r}"
            raise DataFormatError(path, message, number) from None
        triples.append((columns[first_sentence], columns[first_sentence + 1], score))
    return triples


def read_sts_benchmark(root: str | Path, split: str) -> list[tuple[str, str, float]]:
    """STS-B ``(sentence1, sentence2, score in [0, 5])`` triples of one split.

    Args:
        root: the SentEval ``data/downstream`` folder (holds ``STS/STSBenchmark``).
        split: ``train``, ``dev`` or ``test``.
    """
    if split not in STSB_FILES:
        raise ValueError(f"unknown STS-B split {split!r}; expected one of {sorted(STSB_FILES)}")
    path = Path(root) / "STS" / "STSBenchmark" / STSB_FILES[split]
    return _scored_pairs(path, header=False, score_column=4, first_sentence=5, score_name="score")


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


SICK_FILES = {"train": "SICK_train.txt", "trial": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}
BINARY_TASK_FILES = {
    # task: (file of label 1, file of label 0), the order and labels SentEval's loaders use
    "MR": ("MR/rt-polarity.pos", "MR/rt-polarity.neg"),
    "CR": ("CR/custrev.pos", "CR/custrev.neg"),
    "SUBJ": ("SUBJ/subj.objective", "SUBJ/subj.subjective"),
    "MPQA": ("MPQA/mpqa.pos", "MPQA/mpqa.neg"),
}
SST2_FILES = {"train": "sentiment-train", "dev": "sentiment-dev", "test": "sentiment-test"}
TREC_FILES = {"train": "train_5500.label", "test": "TREC_10.label"}


def read_sick(root: str | Path, split: str) -> list[tuple[str, str, float]]:
    """SICK ``(sentence_A, sentence_B, relatedness in [1, 5])`` triples of one split.

    Args:
        root: the SentEval ``data/downstream`` folder (holds ``SICK``).
        split: ``train``, ``trial`` or ``test`` (MTEB's SICK-R test set is all three together).
    """
    if split not in SICK_FILES:
        raise ValueError(f"unknown SICK split {split!r}; expected one of {sorted(SICK_FILES)}")
    path = Path(root) / "SICK" / SICK_FILES[split]
    return _scored_pairs(path, header=True, score_column=3, first_sentence=1, score_name="relatedness")


def read_binary_task(root: str | Path, task: str) -> list[tuple[str, int]]:
    """``(sentence, label)`` of MR, CR, SUBJ or MPQA, label-1 file first, as SentEval loads them.

    Sentences are whitespace-tokenised and re-joined with single spaces (SentEval splits each line
    into tokens and the usual batcher joins them back). Files are read as latin-1, as SentEval does.
    SentEval keeps blank lines as empty samples (so CR has 3,775 and MPQA 10,606); its example
    batchers encode an empty sample as ``"."``, and so does this reader.
    """
    if task not in BINARY_TASK_FILES:
        raise ValueError(f"unknown binary task {task!r}; expected one of {sorted(BINARY_TASK_FILES)}")
    samples = []
    for relative, label in zip(BINARY_TASK_FILES[task], (1, 0), strict=True):
        path = Path(root) / relative
        for line in _lines(path, "latin-1"):
            samples.append((" ".join(line.split()) or ".", label))
    return samples


def read_sst2(root: str | Path, split: str) -> list[tuple[str, int]]:
    """SST-2 ``(sentence, label)`` of one split (``train``, ``dev`` or ``test``) from ``SST/binary``."""
    if split not in SST2_FILES:
        raise ValueError(f"unknown SST-2 split {split!r}; expected one of {sorted(SST2_FILES)}")
    path = Path(root) / "SST" / "binary" / SST2_FILES[split]
    samples = []
    for number, line in enumerate(_lines(path, "utf-8"), start=1):
        if not line.strip():
            continue
        columns = line.strip().split("\t")
        if len(columns) != 2 or columns[1] not in {"0", "1"}:
            raise DataFormatError(path, "expected 'sentence<TAB>label' with label 0 or 1", number)
        samples.append((" ".join(columns[0].split()), int(columns[1])))
    return samples


def read_trec(root: str | Path, split: str) -> list[tuple[str, str]]:
    """TREC ``(question, coarse label)`` of one split (``train`` or ``test``), parsed as SentEval does."""
    if split not in TREC_FILES:
        raise ValueError(f"unknown TREC split {split!r}; expected one of {sorted(TREC_FILES)}")
    path = Path(root) / "TREC" / TREC_FILES[split]
    samples = []
    for number, line in enumerate(_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        target, colon, rest = line.strip().partition(":")
        fine_and_text = rest.split(" ", 1)
        if not colon or len(fine_and_text) != 2:
            raise DataFormatError(path, "expected 'COARSE:fine question'", number)
        samples.append((" ".join(fine_and_text[1].split()), target))
    return samples

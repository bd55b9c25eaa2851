"""CodeSearchNet MRR: hand-computed ranks, grouping into 1,000s, file layouts and bad records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from eval.benchmarks import Context
from eval.benchmarks.codesearchnet import CodeSearchNetBenchmark, codebert_order, group_mrr
from pairdata.errors import DataFormatError


def test_group_mrr_counts_ties_against_the_true_code() -> None:
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    codes = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    # text 0: true 1.0 ties with code 1 -> rank 2; text 1: true 0.0, codes 0 (0.0) and 2 (0.8) -> rank 3;
    # text 2: true 0.6 below codes 0 and 1 (1.0) -> rank 3
    assert group_mrr(texts, codes) == pytest.approx([1 / 2, 1 / 3, 1 / 3])


class _LengthSource:
    """A dense stand-in: ``"t<i>"`` maps to the one-hot of i mod 50, so each docstring finds its code."""

    def fingerprint(self) -> str:
        return "length"

    def encode(self, texts, role):
        vectors = np.zeros((len(texts), 50), dtype=np.float32)
        vectors[np.arange(len(texts)), [int(t[1:]) % 50 for t in texts]] = 1.0
        return vectors


def _write(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True)
    rows = [{"docstring_tokens": [f"t{i}"], "code_tokens": [f"t{i}"]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_groups_of_group_size_drop_the_partial_tail(tmp_path: Path) -> None:
    _write(tmp_path / "code-python" / "test.jsonl", 130)
    bench = CodeSearchNetBenchmark(str(tmp_path), languages=["python"], group_size=50, shuffle_seed=None)
    output = bench.run(Context.for_source(_LengthSource(), "length", None, False))
    assert output.details["python"] == {
        "pairs": 130,
        "queries": 100,
        "groups": 2,
        "groups_available": 2,
        "distractors": 49,
        "shuffle_seed": None,
    }
    assert output.scores[0].key == "codesearchnet/python/mrr"
    assert output.scores[0].value == pytest.approx(100.0)
    # Fewer pairs than one group: all 130 are ranked together, and t<i> ties with t<i+50>.
    whole = CodeSearchNetBenchmark(str(tmp_path), languages=["python"], group_size=1000, shuffle_seed=None)
    output = whole.run(Context.for_source(_LengthSource(), "length", None, False))
    assert output.details["python"]["distractors"] == 129
    assert output.scores[0].value < 100.0


def test_missing_language_and_bad_record_are_clear_errors(tmp_path: Path) -> None:
    bench = CodeSearchNetBenchmark(str(tmp_path), languages=["go"])
    with pytest.raises(DataFormatError, match="no test file for go"):
        bench.files("go")
    path = tmp_path / "go" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(
        '{"docstring_tokens": ["a"], "code_tokens": ["b"]}\n{"docstring_tokens": [], "code_tokens": ["b"]}\n'
    )
    with pytest.raises(DataFormatError, match=r"test\.jsonl:2: field 'docstring_tokens'"):
        bench.load("go")


def test_records_are_shuffled_as_codebert_before_grouping(tmp_path: Path) -> None:
    # CodeBERT's process_data.py: np.random.seed(0); np.random.shuffle(idxs); then chunks of 1,000.
    expected = np.arange(130)
    np.random.seed(0)
    np.random.shuffle(expected)
    assert codebert_order(130, 0).tolist() == expected.tolist()
    assert codebert_order(5, None).tolist() == [0, 1, 2, 3, 4]

    _write(tmp_path / "code-python" / "test.jsonl", 130)
    seen: list[list[str]] = []

    class Recording(_LengthSource):
        def encode(self, texts, role):
            seen.append(list(texts))
            return super().encode(texts, role)

    bench = CodeSearchNetBenchmark(str(tmp_path), languages=["python"], group_size=50)
    output = bench.run(Context.for_source(Recording(), "length", None, False))
    assert output.details["python"]["shuffle_seed"] == 0
    # The 100 ranked queries are the first two chunks of the shuffled records, not records 0..99.
    assert seen[0] == sorted({f"t{i}" for i in expected[:100]})
    # In shuffled groups t<i> can meet t<i+50> (same one-hot), so this stand-in no longer scores 100.
    assert output.scores[0].value < 100.0


def test_code_tokens_with_line_breaks_are_flattened(tmp_path: Path) -> None:
    path = tmp_path / "code-go" / "test.jsonl"
    path.parent.mkdir()
    record = {"docstring_tokens": ["adds", "one"], "code_tokens": ["s", "=", '"a\nb"', "\r\n"]}
    path.write_text(json.dumps(record) + "\n")
    texts, codes, _ = CodeSearchNetBenchmark(str(tmp_path), languages=["go"]).load("go")
    assert texts == ["adds one"]
    assert codes == ['s = "a b"  ']


class _RecordingSource(_LengthSource):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, role):
        self.seen.extend(texts)
        return super().encode(texts, role)


def test_max_groups_scores_only_the_first_groups_after_the_shuffle(tmp_path: Path) -> None:
    _write(tmp_path / "code-python" / "test.jsonl", 130)
    source = _RecordingSource()
    bench = CodeSearchNetBenchmark(str(tmp_path), languages=["python"], group_size=50, max_groups=1)
    output = bench.run(Context.for_source(source, "recording", None, False))
    first_group = {f"t{i}" for i in codebert_order(130, 0)[:50]}
    assert set(source.seen) == first_group and len(source.seen) == 100  # 50 docstrings + their 50 codes
    assert output.details["python"]["groups"] == 1 and output.details["python"]["groups_available"] == 2
    assert output.details["python"]["queries"] == 50
    with pytest.raises(ValueError, match="max_groups"):
        CodeSearchNetBenchmark(str(tmp_path), max_groups=0)

"""Bad input gives errors naming the file and line; BEIR folders load with the absent-qrels count."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from eval.data import load_beir, read_qrels
from pairdata.errors import DataFormatError


def test_beir_folder_loads_and_counts_qrels_absent_from_the_corpus(tiny_beir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        data = load_beir(tiny_beir)
    assert len(data.corpus) == 4 and set(data.queries) == {"q1", "q2"}
    assert data.missing_qrel_docs == 1
    assert "absent" in caplog.text and "qrels/test.tsv" in caplog.text
    assert data.document_text("d2") == "Rockets rockets burn fuel to reach orbit around the earth"


def test_malformed_jsonl_line_names_file_and_line(tiny_beir: Path) -> None:
    path = tiny_beir / "corpus.jsonl.gz"
    with gzip.open(path, "at", encoding="utf-8") as handle:
        handle.write('{"_id": "d9", "text": "fine"}\n{"_id": "d10", "text": \n')
    with pytest.raises(DataFormatError) as error:
        load_beir(tiny_beir)
    assert error.value.line == 6
    assert f"{path}:6" in str(error.value)


def test_record_without_text_names_file_and_line(tiny_beir: Path) -> None:
    path = tiny_beir / "queries.jsonl"
    path.write_text(path.read_text() + '{"_id": "q3", "body": "no text field"}\n')
    with pytest.raises(DataFormatError, match=r"queries\.jsonl:3: 'text' must be a string"):
        load_beir(tiny_beir)


def test_missing_file_and_folder_give_clear_errors(tiny_beir: Path, tmp_path: Path) -> None:
    (tiny_beir / "queries.jsonl").unlink()
    with pytest.raises(DataFormatError, match="queries.jsonl: file not found"):
        load_beir(tiny_beir)
    with pytest.raises(DataFormatError, match=r"folder not found.*scifact\.zip"):
        load_beir(tmp_path / "scifact")


def test_malformed_qrels_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv:3: expected 3 tab-separated columns"):
        read_qrels(path)
    path.write_text("q1\td1\tyes\n")
    with pytest.raises(DataFormatError, match=r"test\.tsv:1: score must be an integer"):
        read_qrels(path)

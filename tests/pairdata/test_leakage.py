"""Benchmark texts and the code test split never reach training pairs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pairdata.code.build import build_code
from pairdata.leakage import LeakageIndex, benchmark_index, iter_benchmark_texts
from pairdata.text.build import build_text, folder_text_source
from pairdata.textnorm import normalize, words
from tests.pairdata.conftest import BENCHMARK_QUERY, BENCHMARK_SENTENCE, folder_specs, write_repos

FILLER = "Harbour life moved slowly in the old days and the fishing fleet left at dawn every single morning. "


def test_benchmark_folder_texts_are_all_read(benchmark_dir: Path) -> None:
    texts = {normalize(text) for _, text in iter_benchmark_texts(benchmark_dir)}
    assert normalize(BENCHMARK_SENTENCE) in texts
    assert "why is the sky blue" in texts  # TREC label stripped
    assert normalize(BENCHMARK_QUERY) in texts
    assert not any("corpus id" in text for text in texts)  # qrels are not texts


def test_index_matches_whole_texts_sentences_and_ngrams(benchmark_dir: Path) -> None:
    index = benchmark_index(benchmark_dir)
    assert index.leaks("Why is the sky blue?")  # whole text, any case and punctuation
    assert index.leaks(f"Some prefix. {BENCHMARK_QUERY.upper()}! And more.")  # a sentence of it
    embedded = "x y " + BENCHMARK_SENTENCE.replace(" weary", ", weary") + " and so on"
    assert index.leaks(embedded)  # a 13-gram inside running text
    assert not index.leaks("The sky is blue because of Rayleigh scattering of sunlight.")
    assert {entry["path"] for entry in index.files} >= {
        "senteval/MR/rt-polarity.pos",
        "dbpedia14/dbpedia_samples.jsonl",
    }


def test_text_build_drops_every_pair_with_benchmark_text(tmp_path: Path, cache, benchmark_dir: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for number in range(12):
        body = " ".join(f"{FILLER}Story {number} part {part}." for part in range(8))
        if number % 3 == 0:  # a benchmark sentence hidden inside the document
            body = body.replace("Story", f"{BENCHMARK_SENTENCE}. Story", 1)
        (docs / f"doc{number}.md").write_text(
            f"# Town chronicle {number}\n\n{body}\n\n## {BENCHMARK_QUERY}\n\n{body}\n"
        )
    index = benchmark_index(benchmark_dir)
    for kind in ("neighbors", "search"):
        manifest = build_text(
            kind,
            data_dir=tmp_path / "data",
            cache=cache,
            leakage=index,
            sources=[folder_text_source(str(docs))],
            chunk_tokens=40,
            min_chunk_tokens=10,
            show_progress=False,
        )
        assert manifest["counts"]["filtered"]["leakage_benchmark_or_code_test"] > 0
        for split in manifest["counts"]["splits"]:
            with gzip.open(tmp_path / "data" / f"text-{kind}" / f"{split}.jsonl.gz", "rt") as handle:
                for line in handle:
                    record = json.loads(line)
                    for text in (record["x"], record["y"]):
                        assert normalize(BENCHMARK_SENTENCE) not in normalize(text)
                        assert normalize(BENCHMARK_QUERY) not in normalize(text)
        assert sum(manifest["counts"]["splits"].values()) > 0


def test_code_train_split_never_contains_test_split_or_benchmark_text(tmp_path: Path, cache, benchmark_dir) -> None:
    folders = write_repos(tmp_path / "src", "python", repos=8)
    # a function whose docstring is a benchmark sentence, copied into every repository
    leaky = f'\n\ndef harbour(n):\n    """{BENCHMARK_QUERY}."""\n    k = n * 2\n    k += 1\n    return k\n'
    # and one docstring shared by all repositories with different code: it lands in test somewhere
    for number, folder in enumerate(folders):
        shared = (
            f'\n\ndef shared{number}(v{number}):\n    """Return the shared helper value for a key."""\n'
            f"    w{number} = v{number} + {number}\n    u{number} = w{number} * 3\n    return u{number}\n"
        )
        with open(folder / "src" / "main.py", "a") as handle:
            handle.write(shared + (leaky if number == 0 else ""))
    manifest = build_code(
        "python",
        data_dir=tmp_path / "data",
        cache=cache,
        leakage=benchmark_index(benchmark_dir),
        sources=folder_specs(folders),
        fractions={"train": 0.6, "valid": 0.2, "test": 0.2},
        show_progress=False,
    )
    data = tmp_path / "data" / "code-python"

    def load(split: str) -> list[dict]:
        with gzip.open(data / f"{split}.jsonl.gz", "rt") as handle:
            return [json.loads(line) for line in handle]

    test_texts = {normalize(r[field]) for r in load("test") for field in ("docstring_summary", "code")}
    assert test_texts
    dropped = manifest["counts"]["leakage_dropped"]
    assert sum(dropped.values()) > 0
    for split in ("train", "valid"):
        for record in load(split):
            assert normalize(record["docstring_summary"]) not in test_texts
            assert normalize(record["code"]) not in test_texts
            assert normalize(BENCHMARK_QUERY) not in normalize(record["docstring_summary"])


@pytest.mark.integration
def test_real_benchmarks_are_indexed() -> None:
    """The shared/data benchmark texts (SentEval, ArguAna, DBpedia-14) are all in the index."""
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    index = benchmark_index(SHARED_DATA)
    for _, text in iter_benchmark_texts(SHARED_DATA):
        assert index.leaks(text) or not words(text)  # punctuation-only fields ('."') hold no text
    assert index.texts > 100_000


def test_empty_index_leaks_nothing() -> None:
    assert not LeakageIndex().leaks("anything at all here")

"""Evaluation at scale: streamed corpora, on-disk embeddings searched in blocks, faiss indexes, N processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import ROOT, compose, write_beir

from eval.cache import Encoder, RowStack
from eval.data import load_beir
from eval.search import exact_search

WORDS = "cat dog bird fish tree rock river cloud stone light water fire earth wind snow rain leaf root".split()


def synthetic_beir(folder: Path, documents: int = 60, queries: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    corpus = [{"_id": f"d{i}", "title": WORDS[i % len(WORDS)], "text": " ".join(rng.choice(WORDS, 12))}
              for i in range(documents)]  # fmt: skip
    corpus.append(dict(corpus[3]))  # a duplicate id: the first record is kept
    asked = [{"_id": f"q{i}", "text": " ".join(rng.choice(WORDS, 4))} for i in range(queries)]
    asked.append({"_id": "d5", "text": corpus[5]["text"]})  # ArguAna-style: a query that is a corpus document
    qrels = [(q["_id"], f"d{int(rng.integers(documents))}", 1) for q in asked]
    return write_beir(folder, corpus, asked, qrels)


class CountingSource:
    """A deterministic dense source (a random unit vector seeded by each text) that counts what it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def fingerprint(self) -> str:
        return "counting"

    def encode(self, texts, role):
        self.encoded += len(texts)
        vectors = np.stack([np.random.default_rng(zlib.crc32(text.encode())).normal(size=24) for text in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_streamed_corpus_reads_back_what_the_in_memory_loader_holds(tmp_path: Path) -> None:
    folder = synthetic_beir(tmp_path / "synthetic")
    whole, streamed = load_beir(folder), load_beir(folder, corpus=False)
    index = streamed.corpus_index
    assert index.ids == list(whole.corpus) and streamed.documents == len(whole.corpus) == 60
    expected = [whole.document_text(doc_id) for doc_id in whole.corpus]
    assert index.texts(0, 7) + index.texts(7, 31) + index.texts(31, 60) == expected
    assert index.texts(10, 12) == expected[10:12]  # going back re-reads from the start
    assert index.rows["d5"] == 5 and streamed.missing_qrel_docs == whole.missing_qrel_docs


def test_blockwise_search_over_parts_equals_one_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[[3, 9, 20]] + 0.1 * rng.normal(size=(3, 8)).astype(np.float32)
    doc_ids = [f"d{i}" for i in range(50)]
    parts = []
    for number, (start, end) in enumerate([(0, 17), (17, 18), (18, 50)]):
        np.save(tmp_path / f"p{number}.npy", docs[start:end].astype(np.float16))
        parts.append(np.load(tmp_path / f"p{number}.npy", mmap_mode="r"))
    stacked = RowStack(parts)
    half = docs.astype(np.float16).astype(np.float32)
    for ignore in (True, False):
        want = exact_search(queries, half, ["d3", "q", "d20"], doc_ids, top_k=10, ignore_identical_ids=ignore)
        got = exact_search(queries, stacked, ["d3", "q", "d20"], doc_ids, top_k=10, ignore_identical_ids=ignore,
                           chunk_size=2, doc_chunk=7)  # fmt: skip
        assert got.keys() == want.keys()
        for query_id in want:
            assert list(got[query_id]) == list(want[query_id])
            np.testing.assert_allclose(list(got[query_id].values()), list(want[query_id].values()), atol=1e-6)
        assert ("d3" in got["d3"]) is not ignore


def test_corpus_embeddings_are_cached_on_disk_and_reused(tmp_path: Path) -> None:
    index = load_beir(synthetic_beir(tmp_path / "synthetic"), corpus=False).corpus_index
    source = CountingSource()
    encoder = Encoder(source, "counting", cache_dir=tmp_path / "cache")
    first = encoder.encode_corpus(index, "document", "synthetic", dtype="float16", chunk=16)
    assert source.encoded == 60 and first.parts[0].dtype == np.float16
    expected = CountingSource().encode(index.texts(0, 60), "document")
    np.testing.assert_allclose(first[0:60], expected, atol=2e-3)
    again = Encoder(source, "counting", cache_dir=tmp_path / "cache").encode_corpus(index, "document", "synthetic",
                                                                                   dtype="float16")  # fmt: skip
    assert source.encoded == 60 and np.array_equal(again[0:60], first[0:60])
    (entry,) = (tmp_path / "cache").rglob("entry.json")
    assert json.loads(entry.read_text())["parts"] == [{"file": "part-000-of-001.npy", "start": 0, "end": 60}]


def test_faiss_flat_equals_exact_and_approximate_indexes_report_recall(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from eval.benchmarks import Context
    from eval.benchmarks.beir import BeirBenchmark

    folder = synthetic_beir(tmp_path / "synthetic", documents=300, queries=40)
    context = Context(model_name="counting", encoder=Encoder(CountingSource(), "counting"), show_progress=False)
    outputs = {}
    for kind in ("exact", "flat", "hnsw", "ivf"):
        options = {"nlist": 8, "nprobe": 2} if kind == "ivf" else {"ef_search": 16} if kind == "hnsw" else {}
        benchmark = BeirBenchmark(str(folder.parent), [str(folder)], index=kind, index_options=options)
        outputs[kind] = benchmark.run(context)
    exact = {s.key: s.value for s in outputs["exact"].scores}
    flat = {s.key: s.value for s in outputs["flat"].scores}
    assert flat.pop("beir/synthetic/index_recall@100") == pytest.approx(100.0)
    assert flat == pytest.approx(exact, abs=1e-6)
    for kind in ("hnsw", "ivf"):
        details = outputs[kind].details["synthetic"]
        assert 0 < details["index_recall@100_vs_exact"] <= 1 and details["index"] == kind
        assert details["queries_per_second"] > 0


def test_bad_index_settings_are_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    from eval.benchmarks.beir import BeirBenchmark

    with pytest.raises(ValueError, match="benchmark.index='annoy' is not one of"):
        BeirBenchmark(str(tmp_path), ["x"], index="annoy")
    with pytest.raises(ValueError, match="embedding_dtype must be one of"):
        BeirBenchmark(str(tmp_path), ["x"], embedding_dtype="int8")
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        BeirBenchmark(str(tmp_path), ["x"], index="hnsw")


def _launch(processes: int, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(processes)]  # fmt: skip
    if processes > 1:
        command.append("--multi_gpu")  # with ACCELERATE_USE_CPU: gloo processes
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.run([*command, "eval/run.py", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.multiprocess
def test_two_processes_score_exactly_as_one(tmp_path: Path, tiny_embedder) -> None:
    checkpoint = tmp_path / "checkpoint"
    tiny_embedder.save_pretrained(checkpoint)
    folder = synthetic_beir(tmp_path / "synthetic", documents=41, queries=9)
    common = ["source=checkpoint", f"source.checkpoint_dir={checkpoint}", "source.max_length=24", "benchmark=beir",
              f"benchmark.datasets=[{folder}]", "benchmark.encode_chunk=8", "show_progress=false", "plot=false",
              "dimensions=[8,null]"]  # fmt: skip
    scores = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}"
        done = _launch(processes, [*common, f"output_dir={out}"])
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads((out / "results.json").read_text())
        assert record["processes"] == processes
        scores[processes] = record["scores"]
    assert scores[1].keys() == scores[2].keys() and len(scores[1]) == 8
    for key, value in scores[1].items():
        assert scores[2][key] == pytest.approx(value, abs=1e-6), key


def test_more_processes_than_documents_is_a_clear_error(tmp_path: Path) -> None:
    from eval.distributed import Shards

    index = load_beir(synthetic_beir(tmp_path / "synthetic", documents=6, queries=2), corpus=False).corpus_index
    encoder = Encoder(CountingSource(), "counting", work_dir=tmp_path, shards=Shards(rank=0, world=8))
    with pytest.raises(ValueError, match="has 6 rows but 8 processes encode it; use at most 6 processes"):
        encoder.encode_corpus(index, "document", "beir/synthetic/corpus")


def test_a_run_composes_with_the_new_keys(tmp_path: Path) -> None:
    overrides = ["benchmark=beir", "benchmark.index=flat", "benchmark.embedding_dtype=float16"]
    cfg = compose([*overrides, f"output_dir={tmp_path}"])
    assert cfg.benchmark.index == "flat" and cfg.work_dir is None

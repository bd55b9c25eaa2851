"""Evaluation at scale: encoding docs/s and peak RSS with 1 vs 2 processes; a 1M-document corpus, exact vs faiss.

Part 1 (``--part processes``): BEIR ArguAna (8,674 documents, 1,406 queries) through
``eval/run.py``, once with one process and once with ``accelerate launch`` of two (gloo, each
process one torch thread), for each ``--models`` source: documents/s of the corpus encode, wall
time of the run, peak RSS per process, and the nDCG@10 of each (they must agree).

Part 2 (``--part corpus``): a synthetic corpus of ``--documents`` passages made of real sentences
(ArguAna's documents and every SentEval/STS/DBpedia text in ../shared/data, split into sentences
and recombined 2-4 at a time with a fixed seed); its queries are one sentence of a random passage,
relevant to that passage. Encoded by ``HashingSource`` (hashed bag of words, random projection to
``--dim``: real-text similarity at numpy speed, so the measurement is of the storage and search,
not the model), stored float32 or float16 on disk, then searched exactly (blocks read from the memory
map) and with faiss flat and HNSW: recall@100 against exact, queries/s, index build time, peak RSS.
Each configuration is its own ``eval/run.py`` process, so peak RSS is its own; at 100k and at
``--documents`` rows, to show whether memory grows with the corpus.

Usage:
    python benchmarks/eval_scale.py                             # both parts (~40 min on 2 cores)
    python benchmarks/eval_scale.py --part corpus --documents 1000000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
DATA = Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


class HashingSource:
    """A dense source: each word hashed into a fixed random direction (``dim``), summed and normalised."""

    def __init__(self, dim: int = 384, name: str = "hashing-384", seed: int = 0) -> None:
        self.dim = dim
        self.name = name
        self.seed = seed
        self._table = np.random.default_rng(seed).standard_normal((1 << 16, dim)).astype(np.float32)

    def fingerprint(self) -> str:
        return f"hashing|{self.dim}|{self.seed}"

    def encode(self, texts, role):
        from pairdata.textnorm import words

        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            buckets = [zlib.crc32(w.encode()) & ((1 << 16) - 1) for w in words(text)]
            if buckets:
                out[row] = self._table[buckets].sum(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def model_metadata(self) -> dict:
        return {"n_parameters": 0, "embed_dim": self.dim, "training_datasets": []}


def real_sentences() -> list[str]:
    from pairdata.leakage import iter_benchmark_texts
    from pairdata.textnorm import sentences, words

    pool = []
    for _, text in iter_benchmark_texts(DATA):
        pool.extend(s.strip() for s in sentences(text) if len(words(s)) >= 5)
    return sorted(set(pool))


def synthetic_corpus(folder: Path, documents: int, queries: int, seed: int = 0) -> Path:
    """A BEIR folder of ``documents`` passages of real sentences (kept when it already exists)."""
    if (folder / "qrels" / "test.tsv").is_file():
        return folder
    pool = real_sentences()
    rng = np.random.default_rng(seed)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    asked = rng.choice(documents, size=queries, replace=False)
    wanted = set(asked.tolist())
    query_rows, qrels = [], []
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8", compresslevel=1) as handle:
        for start in range(0, documents, 100_000):
            count = min(100_000, documents - start)
            sizes = rng.integers(2, 5, size=count)
            picks = rng.integers(0, len(pool), size=int(sizes.sum()))
            offset = 0
            for i, size in enumerate(sizes):
                chosen = [pool[j] for j in picks[offset : offset + size]]
                offset += size
                doc_id = f"s{start + i}"
                handle.write(json.dumps({"_id": doc_id, "title": "", "text": " ".join(chosen)}) + "\n")
                if start + i in wanted:
                    query_rows.append({"_id": f"q{start + i}", "text": chosen[int(rng.integers(len(chosen)))]})
                    qrels.append(f"q{start + i}\t{doc_id}\t1")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in query_rows))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    return folder


def eval_run(processes: int, overrides: list[str], out: Path, timeout: int = 3600) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    if processes == 1:
        command = [sys.executable, "eval/run.py"]
    else:
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision",
                   "no", "--dynamo_backend", "no", "--multi_gpu", "--num_processes", str(processes),
                   "eval/run.py"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([*command, *overrides, f"output_dir={out}", "show_progress=false", "plot=false"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"eval/run.py failed ({' '.join(overrides)}):\n{done.stderr[-4000:]}")
    record = json.loads((out / "results.json").read_text())
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    return record


SOURCES = {
    "minilm": ["source=minilm"],
    "smollm2": ["source=checkpoint", "source.max_length=512"],  # checkpoint_dir added from --smollm2
}


def part_processes(models: list[str], smollm2: str | None, work: Path, max_documents: int | None) -> list[str]:
    rows = ["| model | processes | documents | docs/s | wall s | peak RSS MiB (per process) | nDCG@10 |",
            "|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for model in models:
        overrides = [*SOURCES[model], "benchmark=beir", "benchmark.datasets=[arguana]", "reference_model=null"]
        if model == "smollm2":
            overrides.append(f"source.checkpoint_dir={smollm2}")
        if max_documents:
            overrides += [f"benchmark.max_documents={max_documents}"]
        results = {}
        for processes in (1, 2):
            threads = ["torch_threads=2"] if processes == 1 else []
            record = eval_run(processes, [*overrides, *threads], work / f"{model}-{processes}")
            name, details = next(iter(record["details"].items()))
            ndcg = record["scores"][f"beir/{name}/ndcg@10"]
            results[processes] = details["documents_per_second"]
            rss = " / ".join(f"{v:.0f}" for v in record["peak_rss_mib"])
            rows.append(f"| {model} | {processes} | {details['documents']} | {details['documents_per_second']:.1f} | "
                        f"{record['wall_seconds']:.0f} | {rss} | {ndcg:.2f} |")  # fmt: skip
            print(rows[-1], flush=True)
        rows.append(f"| {model} | 2 vs 1 | | {results[2] / results[1]:.2f}x | | | |")
    return rows


def part_corpus(documents: list[int], queries: int, dim: int, work: Path, kinds: list[str]) -> list[str]:
    rows = ["| documents | storage | search | recall@100 vs exact | queries/s | index build s | docs/s encode | "
            "wall s | peak RSS MiB | nDCG@10 |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    conf = work / "conf"
    (conf / "source").mkdir(parents=True, exist_ok=True)
    (conf / "source" / "hashing.yaml").write_text(
        "_target_: benchmarks.eval_scale.HashingSource\ndim: 384\nname: hashing\n"
    )
    for count in documents:
        folder = synthetic_corpus(work / f"synthetic-{count}", count, queries)
        cache = work / "cache"
        for dtype, kind in [("float32", "exact"), ("float16", "exact"), *(("float32", k) for k in kinds)]:
            overrides = [f"--config-dir={conf}", "source=hashing", f"source.dim={dim}", "benchmark=beir",
                         f"benchmark.datasets=[{folder}]", "reference_model=null", f"benchmark.index={kind}",
                         f"benchmark.embedding_dtype={dtype}", f"cache_dir={cache}", "torch_threads=2",
                         "mteb_results=false"]  # fmt: skip
            record = eval_run(1, overrides, work / f"run-{count}-{dtype}-{kind}")
            name, details = next(iter(record["details"].items()))
            recall = details.get("index_recall@100_vs_exact")
            qps = details.get("queries_per_second") or details["queries"] / details["exact_search_seconds"]
            # the faiss runs read the float32 exact run's cached embeddings: no encode rate to report
            encode_rate = f"{details['documents_per_second']:.0f}" if kind == "exact" else "cached"
            rows.append(
                f"| {count} | {dtype} | {kind} | {'–' if recall is None else f'{recall:.4f}'} | "
                f"{qps:.0f} | {details.get('index_build_seconds', '–')} | "
                f"{encode_rate} | {record['wall_seconds']:.0f} | "
                f"{record['peak_rss_mib'][0]:.0f} | {record['scores'][f'beir/{name}/ndcg@10']:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["processes", "corpus", "both"], default="both")
    parser.add_argument("--models", nargs="+", default=["minilm"], choices=sorted(SOURCES))
    parser.add_argument("--smollm2", default=None, help="checkpoint folder of a SmolLM2 tower (for --models smollm2)")
    parser.add_argument("--max-documents", type=int, default=None, help="part 1: an ArguAna document sample")
    parser.add_argument("--documents", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--indexes", nargs="+", default=["flat", "hnsw"], choices=["flat", "hnsw", "ivf"])
    parser.add_argument("--work", type=Path, default=Path("runs/eval_scale"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"cores: {os.cpu_count()}, torch threads: 2 for one process, 1 each for two", flush=True)
    if args.part in ("processes", "both"):
        print("\n".join(part_processes(args.models, args.smollm2, args.work, args.max_documents)), flush=True)
    if args.part in ("corpus", "both"):
        print("\n".join(part_corpus(args.documents, args.queries, args.dim, args.work, args.indexes)), flush=True)


if __name__ == "__main__":
    main()

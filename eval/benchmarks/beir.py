"""BEIR retrieval: exact dense search over on-disk embeddings, a faiss index, or a lexical source; pytrec_eval.

Each dataset is a BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``,
``qrels/<split>.tsv``), named under ``data_root`` or given as a path. A name found neither under
``data_root`` nor under ``download_dir`` is fetched from BEIR's server (``eval.data.download_beir``)
before anything is encoded; offline, the error names the folder to create and the URL. Documents are encoded as
``title + " " + text`` with the ``document`` role, queries with the ``query`` role. The corpus is
streamed from its file and its embeddings are written to and read from disk (``Encoder.encode_corpus``),
so memory does not grow with the corpus; several processes share the encoding. Metrics:
nDCG@10 (main), MAP@100, Recall@100 and MRR@10 (x100), and their average over datasets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.data import BeirDataset, download_beir, load_beir
from eval.index import IndexOptions, build_index, check_index_type, index_search, recall_against
from eval.metrics import RETRIEVAL_METRICS, retrieval_scores
from eval.report import Score
from eval.search import exact_search, own_rows
from pairdata.vectors import DTYPES

logger = logging.getLogger(__name__)

# The cpt paper's BEIR subset: its "average" references mean exactly these 11 datasets.
PAPER_SUBSET = (
    "trec-covid",
    "nfcorpus",
    "hotpotqa",
    "fiqa",
    "arguana",
    "webis-touche2020",
    "quora",
    "dbpedia-entity",
    "fever",
    "climate-fever",
    "scifact",
)


class BeirBenchmark:
    """Args:
    data_root: the folder holding BEIR datasets by name (``../shared/data/beir``).
    datasets: dataset names under ``data_root``, or paths to BEIR-layout folders.
    split: the qrels split (``test``).
    top_k: hits retrieved per query (at least the deepest metric cut-off).
    ignore_identical_ids: drop a hit whose doc id equals the query id (BEIR's rule).
    metrics: metric names (``ndcg@10``, ``map@100``, ``recall@100``, ``mrr@10``); the first is main.
    chunk_size: queries per search matmul.
    download: fetch a named dataset that is not on disk (never when ``$CPT_OFFLINE`` or
        ``$HF_HUB_OFFLINE`` is set: then the error says where to put it).
    download_dir: where fetched datasets go (``<download_dir>/<name>``), also searched for names;
        ``None``: ``data_root``.
    download_url: the folder URL holding ``<name>.zip``; ``None``: ``$CPT_BEIR_URL``, else BEIR's server.
    checksums: name -> md5 of the zip, over BEIR's published md5s (for mirrors of other files).
    show_progress: a progress bar while downloading.
    index: ``exact`` (chunked exact search over the on-disk matrix) or a faiss index, ``flat``,
        ``hnsw`` or ``ivf`` (``eval.index``; its recall@top_k against exact search is reported).
    index_options: ``eval.index.IndexOptions`` fields (``ef_search``, ``nprobe``, ...).
    embedding_dtype: storage of the corpus embeddings on disk, ``float32`` or ``float16``
        (docs/benchmarks.md measures both); scores are computed in float32 either way.
    encode_chunk: documents encoded (and written) per chunk.
    doc_chunk: document rows read per block of the exact search.
    max_queries: score a fixed sample of this many queries (a cheap estimate; ``None``: all).
    max_documents: search a fixed sample of this many documents: the sampled queries' relevant
        ones plus random others (``None``: all). Sampled datasets are named ``NAME-qQ-dD``.
    sample_seed: the seed of both samples.
    task: the task text a checkpoint's task instruction takes (one for every dataset, or dataset -> text);
        ``None``: the checkpoint's own.
    """

    name = "beir"

    def __init__(
        self,
        data_root: str,
        datasets: list[str],
        split: str = "test",
        top_k: int = 100,
        ignore_identical_ids: bool = True,
        metrics: list[str] | tuple[str, ...] = RETRIEVAL_METRICS,
        chunk_size: int = 1024,
        download: bool = True,
        download_dir: str | None = None,
        download_url: str | None = None,
        checksums: dict[str, str] | None = None,
        show_progress: bool = True,
        index: str = "exact",
        index_options: dict | None = None,
        embedding_dtype: str = "float32",
        encode_chunk: int = 8192,
        doc_chunk: int = 16_384,
        max_queries: int | None = None,
        max_documents: int | None = None,
        sample_seed: int = 0,
        task: str | dict[str, str] | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("benchmark.datasets is empty; name at least one BEIR dataset or folder")
        deepest = max(int(metric.partition("@")[2] or 0) for metric in metrics)
        if top_k < deepest:
            raise ValueError(f"top_k={top_k} is below the deepest metric cut-off {deepest}; raise benchmark.top_k")
        self.data_root = resolve_data_path(data_root)
        self.datasets = list(datasets)
        self.split = split
        self.task = task
        self.top_k = top_k
        self.ignore_identical_ids = ignore_identical_ids
        self.metrics = list(metrics)
        self.chunk_size = chunk_size
        self.download = download
        self.download_dir = resolve_data_path(download_dir) if download_dir else None
        self.download_url = download_url
        self.checksums = dict(checksums or {})
        self.show_progress = show_progress
        check_index_type(index)
        if embedding_dtype not in DTYPES:
            raise ValueError(f"benchmark.embedding_dtype must be one of {sorted(DTYPES)}, got {embedding_dtype!r}")
        self.index = index
        self.index_options = IndexOptions(**dict(index_options or {}))
        self.embedding_dtype = embedding_dtype
        self.encode_chunk = encode_chunk
        self.doc_chunk = doc_chunk
        for key, value in (("max_queries", max_queries), ("max_documents", max_documents)):
            if value is not None and value < 1:
                raise ValueError(f"benchmark.{key}={value} must be >= 1 or null")
        self.max_queries = max_queries
        self.max_documents = max_documents
        self.sample_seed = sample_seed

    def folder(self, dataset: str) -> Path:
        """Where ``dataset`` is read from: a given path, ``data_root/<name>`` or ``download_dir/<name>``."""
        if "/" in dataset or "\\" in dataset:
            return resolve_data_path(dataset)
        if self.download_dir is not None and not (self.data_root / dataset).is_dir():
            if (self.download_dir / dataset).is_dir():
                return self.download_dir / dataset
        return self.data_root / dataset

    def prepare(self, dataset: str) -> Path:
        """The folder of ``dataset``, downloading a named one that is on disk nowhere (when allowed)."""
        folder = self.folder(dataset)
        if folder.is_dir() or not self.download or "/" in dataset or "\\" in dataset:
            return folder  # a missing folder is reported by load_beir, naming it and the URL
        return download_beir(
            dataset,
            self.download_dir or self.data_root,
            url_base=self.download_url,
            md5=self.checksums.get(dataset),
            show_progress=self.show_progress,
        )

    def retrieve(self, data: BeirDataset, context: Context, details: dict | None = None) -> dict[str, dict[str, float]]:
        """query id -> {doc id: score}, top ``top_k`` per query; ``details`` receives the index's figures."""
        query_ids = list(data.queries)
        if context.lexical is not None:
            corpus = {doc_id: data.document_text(doc_id) for doc_id in data.corpus}
            return context.lexical.search(corpus, data.queries, self.top_k, self.ignore_identical_ids)
        task = self.task.get(data.name.split("-q")[0]) if isinstance(self.task, dict) else self.task
        encoder = context.require_dense(self.name).for_task(task)
        corpus = data.corpus_index
        if corpus is None:
            raise ValueError(f"{data.name}: load the dataset with corpus=False for dense retrieval (streamed corpus)")
        started = time.perf_counter()
        doc_vectors = encoder.encode_corpus(corpus, "document", f"beir/{data.name}/corpus", dtype=self.embedding_dtype,
                                            chunk=self.encode_chunk, show_progress=context.show_progress)  # fmt: skip
        encode_seconds = time.perf_counter() - started
        if details is not None:  # includes reading the file; a cache hit reads the embeddings instead
            details.update(corpus_encode_seconds=round(encode_seconds, 2),
                           documents_per_second=round(len(corpus) / max(encode_seconds, 1e-9), 1))  # fmt: skip
        query_vectors = encoder.encode(
            [data.queries[qid] for qid in query_ids], "query", f"beir/{data.name}/queries-{self.split}"
        )
        started = time.perf_counter()
        exact = exact_search(query_vectors, doc_vectors, query_ids, corpus.ids, top_k=self.top_k,
                             ignore_identical_ids=self.ignore_identical_ids, chunk_size=self.chunk_size,
                             show_progress=context.show_progress, doc_chunk=self.doc_chunk, doc_rows=corpus.rows,
                             shards=context.shards)  # fmt: skip
        exact_seconds = time.perf_counter() - started
        if details is not None:
            details["exact_search_seconds"] = round(exact_seconds, 3)
        if self.index == "exact":
            return exact
        approximate, figures = None, None
        if context.shards.is_main:
            approximate, figures = self._index_search(doc_vectors, query_vectors, query_ids, corpus, exact)
        approximate, figures = context.shards.broadcast((approximate, figures))
        if details is not None:
            details.update(figures)
        return approximate

    def _index_search(self, doc_vectors, query_vectors, query_ids, corpus, exact) -> tuple[dict, dict]:
        started = time.perf_counter()
        index = build_index(self.index, doc_vectors, self.index_options)
        built = time.perf_counter()
        exclude = own_rows(query_ids, corpus.rows) if self.ignore_identical_ids else None
        run = index_search(index, query_vectors, query_ids, corpus.ids, self.top_k, exclude)
        searched = time.perf_counter()
        recall = recall_against(run, exact, self.top_k)
        logger.info("faiss %s: recall@%d against exact search %.4f", self.index, self.top_k, recall)
        return run, {
            "index": self.index,
            f"index_recall@{self.top_k}_vs_exact": round(recall, 6),
            "index_build_seconds": round(built - started, 3),
            "index_search_seconds": round(searched - built, 3),
            "queries_per_second": round(len(query_ids) / max(searched - built, 1e-9), 1),
        }

    def run(self, context: Context) -> BenchmarkOutput:
        scores: list[Score] = []
        files = {}
        details = {}
        # Every dataset is on disk before the first encode (and before a source can set HF_HUB_OFFLINE).
        folders = [self.prepare(dataset) for dataset in self.datasets]
        for folder in folders:
            data = load_beir(folder, self.split, corpus=context.lexical is not None, max_queries=self.max_queries,
                             max_documents=self.max_documents, sample_seed=self.sample_seed)  # fmt: skip
            files.update({f"{data.name}/{label}": path for label, path in data.files.items()})
            search_details: dict = {}
            run = self.retrieve(data, context, search_details)
            means, _ = retrieval_scores(data.qrels, run, self.metrics)
            for i, metric in enumerate(self.metrics):
                scores.append(Score(f"beir/{data.name}/{metric}", 100 * means[metric], main=i == 0))
            logger.info("%s: %s", data.name, ", ".join(f"{m} {100 * v:.2f}" for m, v in means.items()))
            if f"index_recall@{self.top_k}_vs_exact" in search_details:
                scores.append(Score(f"beir/{data.name}/index_recall@{self.top_k}",
                                    100 * search_details[f"index_recall@{self.top_k}_vs_exact"]))  # fmt: skip
            details[data.name] = {
                **search_details,
                "documents": data.documents,
                "queries": len(data.queries),
                "qrels_docs_absent_from_corpus": data.missing_qrel_docs,
                "qrels_queries_without_text": data.missing_qrel_queries,
            }
        if len(self.datasets) > 1:
            # "average" only over the paper's 11 datasets (what its references mean), else "average_subset".
            label = "average" if sorted(details) == sorted(PAPER_SUBSET) else "average_subset"
            for metric in self.metrics:
                values = [s.value for s in scores if s.key.endswith(f"/{metric}")]
                scores.append(Score(f"beir/{label}/{metric}", float(np.mean(values))))
        return BenchmarkOutput(scores=scores, data_files=files, details=details)

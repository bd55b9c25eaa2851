"""BEIR retrieval: exact dense search (or a lexical source), scored with pytrec_eval.

Each dataset is a BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``,
``qrels/<split>.tsv``), named under ``data_root`` or given as a path. A name found neither under
``data_root`` nor under ``download_dir`` is fetched from BEIR's server (``eval.data.download_beir``)
before anything is encoded; offline, the error names the folder to create and the URL. Documents are encoded as
``title + " " + text`` with the ``document`` role, queries with the ``query`` role. Metrics:
nDCG@10 (main), MAP@100, Recall@100 and MRR@10 (x100), and their average over datasets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.data import BeirDataset, download_beir, load_beir
from eval.metrics import RETRIEVAL_METRICS, retrieval_scores
from eval.report import Score
from eval.search import exact_search

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
    ) -> None:
        if not datasets:
            raise ValueError("benchmark.datasets is empty; name at least one BEIR dataset or folder")
        deepest = max(int(metric.partition("@")[2] or 0) for metric in metrics)
        if top_k < deepest:
            raise ValueError(f"top_k={top_k} is below the deepest metric cut-off {deepest}; raise benchmark.top_k")
        self.data_root = resolve_data_path(data_root)
        self.datasets = list(datasets)
        self.split = split
        self.top_k = top_k
        self.ignore_identical_ids = ignore_identical_ids
        self.metrics = list(metrics)
        self.chunk_size = chunk_size
        self.download = download
        self.download_dir = resolve_data_path(download_dir) if download_dir else None
        self.download_url = download_url
        self.checksums = dict(checksums or {})
        self.show_progress = show_progress

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

    def retrieve(self, data: BeirDataset, context: Context) -> dict[str, dict[str, float]]:
        """query id -> {doc id: score}, top ``top_k`` per query."""
        doc_ids = list(data.corpus)
        query_ids = list(data.queries)
        if context.lexical is not None:
            corpus = {doc_id: data.document_text(doc_id) for doc_id in doc_ids}
            return context.lexical.search(corpus, data.queries, self.top_k, self.ignore_identical_ids)
        encoder = context.require_dense(self.name)
        doc_vectors = encoder.encode(
            [data.document_text(doc_id) for doc_id in doc_ids], "document", f"beir/{data.name}/corpus"
        )
        query_vectors = encoder.encode(
            [data.queries[qid] for qid in query_ids], "query", f"beir/{data.name}/queries-{self.split}"
        )
        return exact_search(
            query_vectors,
            doc_vectors,
            query_ids,
            doc_ids,
            top_k=self.top_k,
            ignore_identical_ids=self.ignore_identical_ids,
            chunk_size=self.chunk_size,
            show_progress=context.show_progress,
        )

    def run(self, context: Context) -> BenchmarkOutput:
        scores: list[Score] = []
        files = {}
        details = {}
        # Every dataset is on disk before the first encode (and before a source can set HF_HUB_OFFLINE).
        folders = [self.prepare(dataset) for dataset in self.datasets]
        for folder in folders:
            data = load_beir(folder, self.split)
            files.update({f"{data.name}/{label}": path for label, path in data.files.items()})
            run = self.retrieve(data, context)
            means, _ = retrieval_scores(data.qrels, run, self.metrics)
            for i, metric in enumerate(self.metrics):
                scores.append(Score(f"beir/{data.name}/{metric}", 100 * means[metric], main=i == 0))
            logger.info("%s: %s", data.name, ", ".join(f"{m} {100 * v:.2f}" for m, v in means.items()))
            details[data.name] = {
                "documents": len(data.corpus),
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

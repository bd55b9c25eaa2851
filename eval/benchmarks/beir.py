"""BEIR retrieval: exact dense search (or a lexical source), scored with pytrec_eval.

Each dataset is a BEIR-layout folder (``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]``,
``qrels/<split>.tsv``), named under ``data_root`` or given as a path. Documents are encoded as
``title + " " + text`` with the ``document`` role, queries with the ``query`` role. Metrics:
nDCG@10 (main), MAP@100, Recall@100 and MRR@10 (x100), and their average over datasets.
"""

from __future__ import annotations

import logging

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.data import BeirDataset, load_beir
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

    def folder(self, dataset: str):
        if "/" in dataset or "\\" in dataset:
            return resolve_data_path(dataset)
        return self.data_root / dataset

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
        for dataset in self.datasets:
            data = load_beir(self.folder(dataset), self.split)
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

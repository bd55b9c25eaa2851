"""Bridges to mteb 2.x: our model sources as an mteb encoder, and our local data as mteb tasks.

- ``SourceEncoder``: an ``mteb`` ``AbsEncoder`` over an ``eval.cache.Encoder`` (so mteb sees the
  same sources, roles and embedding cache as our harnesses); mteb's ``query``/``document`` prompt
  types map to our roles, anything else to ``symmetric``.
- ``local_retrieval_task`` / ``local_sts_task``: mteb tasks built from data already in memory, so
  mteb runs offline on exactly the files our harness reads.

Always call ``mteb.evaluate(..., cache=None)``: with a cache mteb returns stored results without
running the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.cache import Encoder
from eval.data import BeirDataset

_TASK_FIELDS: dict[str, Any] = {
    "reference": None,
    "dataset": {"path": "local", "revision": "local"},
    "category": "t2t",
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "date": None,
    "domains": None,
    "task_subtypes": None,
    "license": None,
    "annotations_creators": None,
    "dialect": None,
    "modalities": ["text"],
    "sample_creation": None,
    "bibtex_citation": None,
}


def source_encoder(encoder: Encoder, name: str) -> Any:
    """An mteb ``AbsEncoder`` that encodes through ``encoder`` (see the module docstring)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    class SourceEncoder(AbsEncoder):
        def __init__(self) -> None:
            self.model = encoder
            # mteb wants "organisation/name"; the source name may have neither part.
            meta_name = name if "/" in name else f"local/{name}"
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites={
                    "name": meta_name,
                    "similarity_fn_name": ScoringFunction.COSINE,
                    "framework": ["PyTorch"],
                }
            )

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
            texts = [text for batch in inputs for text in batch["text"]]
            kind = getattr(prompt_type, "value", prompt_type)
            role = kind if kind in ("query", "document") else "symmetric"
            return encoder.encode(texts, role, f"mteb/{task_metadata.name}/{hf_split}")

    return SourceEncoder()


def local_retrieval_task(data: BeirDataset, ignore_identical_ids: bool = True, k_values: Sequence[int] = ()) -> Any:
    """An mteb retrieval task (main score nDCG@10) over an already loaded BEIR dataset."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    split = RetrievalSplitData(
        queries=Dataset.from_list([{"id": qid, "text": text} for qid, text in data.queries.items()]),
        corpus=Dataset.from_list(
            [{"id": doc_id, "text": doc["text"], "title": doc["title"]} for doc_id, doc in data.corpus.items()]
        ),
        relevant_docs={qid: dict(docs) for qid, docs in data.qrels.items()},
        top_ranked=None,
    )

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=f"Local{data.name}",
            description=f"BEIR-layout folder {data.files.get('corpus', data.name)} read by eval.data",
            type="Retrieval",
            main_score="ndcg_at_10",
            **_TASK_FIELDS,
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    task = LocalRetrieval()
    task.ignore_identical_ids = ignore_identical_ids
    if k_values:
        task.k_values = list(k_values)
        task._top_k = max(k_values)
    return task


def local_sts_task(name: str, triples: Sequence[tuple[str, str, float]], min_score: float, max_score: float) -> Any:
    """An mteb STS task (main score cosine Spearman) over ``(sentence1, sentence2, score)`` triples."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    dataset = DatasetDict(
        {
            "test": Dataset.from_dict(
                {
                    "sentence1": [t[0] for t in triples],
                    "sentence2": [t[1] for t in triples],
                    "score": [float(t[2]) for t in triples],
                }
            )
        }
    )

    class LocalSTS(AbsTaskSTS):
        metadata = TaskMetadata(
            name=f"Local{name}",
            description=f"{name} read by pairdata.senteval",
            type="STS",
            main_score="cosine_spearman",
            **_TASK_FIELDS,
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = dataset
            self.data_loaded = True

    task = LocalSTS()
    task.min_score = min_score
    task.max_score = max_score
    return task


def evaluate(model: Any, tasks: Sequence[Any], show_progress: bool = False) -> dict[str, dict[str, float]]:
    """Run mteb (no result cache) and return task name -> {score name: value in [0, 1]} of split test."""
    import mteb

    result = mteb.evaluate(model, list(tasks), cache=None, show_progress_bar=show_progress)
    scores: dict[str, dict[str, float]] = {}
    for task_result in result.task_results:
        split_scores = task_result.scores["test"][0]
        scores[task_result.task_name] = {
            key: float(value) for key, value in split_scores.items() if isinstance(value, int | float)
        }
    return scores

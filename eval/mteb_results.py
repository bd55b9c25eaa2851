"""Our results in MTEB's own format: ``TaskResult`` JSON files and a ``model_meta.json`` per run.

Every ``eval/run.py`` run writes ``OUTPUT/mteb/results/<org>__<name>/<revision>/<Task>.json`` and
``model_meta.json`` there (mteb's ``ResultCache`` layout, what the ``embeddings-benchmark/results``
repository holds), so a run can be loaded with ``mteb.ResultCache(OUTPUT/"mteb").load_results()``,
compared with published models and submitted to the leaderboard.

Scores become the MTEB task they reproduce: our BEIR folders are the same data as MTEB's BEIR
tasks (``arguana`` -> ``ArguAna``), STS-B test and SICK-R are MTEB's ``STSBenchmark`` and
``SICK-R``, and ``benchmark=mteb`` runs are written as mteb scored them (local tasks under their
official names). Scores keep mteb's conventions: fractions, not x100, with mteb's metric names
(``ndcg_at_10``, ``cosine_spearman``) and ``main_score``. CodeSearchNet-style MRR and SentEval
have no MTEB task with the same protocol: they are listed in ``not_converted``, never forced into
one. The task's dataset revision is mteb's; the sha256 of the files we actually read stays in
``results.json``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.report import Score
from pairdata.store import replace_folder

logger = logging.getLogger(__name__)

MTEB_DIR = "mteb"
BEIR_TASKS = {
    "arguana": "ArguAna",
    "climate-fever": "ClimateFEVER",
    "dbpedia-entity": "DBPedia",
    "fever": "FEVER",
    "fiqa": "FiQA2018",
    "hotpotqa": "HotpotQA",
    "msmarco": "MSMARCO",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "quora": "QuoraRetrieval",
    "scidocs": "SCIDOCS",
    "scifact": "SciFact",
    "trec-covid": "TRECCOVID",
    "webis-touche2020": "Touche2020",
}
STS_TASKS = {"STSBenchmark": "STSBenchmark", "SICK-R": "SICK-R"}
RETRIEVAL_METRICS = {"ndcg@": "ndcg_at_", "map@": "map_at_", "recall@": "recall_at_", "mrr@": "mrr_at_"}
STS_METRICS = {"spearman": "cosine_spearman", "pearson": "cosine_pearson"}
# mteb's ModelMeta fields a source may fill (ModelMeta forbids any other key).
META_FIELDS = (
    "revision", "n_parameters", "embed_dim", "max_tokens", "framework", "use_instructions", "reference",
    "training_datasets", "adapted_from", "open_weights", "model_type",
)  # fmt: skip


@dataclass
class TaskScores:
    """One MTEB task's scores of a run: split -> subset -> {mteb score name: value}."""

    task: str
    scores: dict[str, dict[str, dict[str, float]]]


def _retrieval_metric(metric: str) -> str | None:
    for ours, theirs in RETRIEVAL_METRICS.items():
        cutoff = metric.removeprefix(ours)
        if metric.startswith(ours) and cutoff.isdigit():
            return theirs + cutoff
    return None


def task_scores(
    benchmark: str, scores: Sequence[Score], details: Mapping[str, Any]
) -> tuple[list[TaskScores], list[str]]:
    """Our scores as MTEB tasks, and the score keys that have no MTEB task (``not_converted``).

    Scores of other embedding sizes (``key@64``) and averages are skipped silently: MTEB has one
    result per task at the model's full size.
    """
    by_task: dict[str, dict[str, float]] = defaultdict(dict)
    main: dict[str, str] = {}
    not_converted: list[str] = []
    for score in scores:
        family, dataset, metric = score.key.split("/", 2)
        if dataset in {"average", "average_subset"} or metric.count("@") > (1 if family in {"beir"} else 0):
            continue
        if metric.startswith("index_recall@"):  # the faiss index against exact search: not a task score
            continue
        if family == "beir" and dataset in BEIR_TASKS and (name := _retrieval_metric(metric)):
            task = BEIR_TASKS[dataset]
        elif family == "sts" and dataset in STS_TASKS and metric in STS_METRICS:
            task, name = STS_TASKS[dataset], STS_METRICS[metric]
        elif family == "mteb":
            task = BEIR_TASKS.get(dataset) or STS_TASKS.get(dataset) or dataset
            by_task[task].update({k: float(v) for k, v in details.get(dataset, {}).items()})
            name = metric
        else:
            not_converted.append(score.key)
            continue
        value = score.value / 100
        by_task[task][name] = value
        if score.main:
            main[task] = name
    results = []
    for task, values in by_task.items():
        values["main_score"] = values[main.get(task, next(iter(values)))]
        split = _eval_split(task)
        results.append(TaskScores(task, {split: {"default": values}}))
    return results, not_converted


def _eval_split(task: str) -> str:
    import mteb

    return mteb.get_task(task).metadata.eval_splits[0]


def model_meta(model_name: str, metadata: Mapping[str, Any]) -> Any:
    """mteb's ``ModelMeta`` of a run's model, from the source's ``model_metadata()`` dict."""
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    fields = {key: metadata[key] for key in META_FIELDS if metadata.get(key) is not None}
    if "training_datasets" in metadata:  # an empty list (trained on nothing) differs from unknown (None)
        training = metadata["training_datasets"]
        fields["training_datasets"] = None if training is None else set(training)
    return ModelMeta.create_empty(
        overwrites={
            "name": model_name if "/" in model_name else f"local/{model_name}",
            "revision": "unknown",
            "release_date": dt.date.today().isoformat(),
            "languages": ["eng-Latn"],
            "similarity_fn_name": ScoringFunction.COSINE,
            "modalities": ["text"],
            **fields,
        }
    )


def write_mteb_results(
    output_dir: Path,
    benchmark: str,
    scores: Sequence[Score],
    details: Mapping[str, Any],
    model_name: str,
    metadata: Mapping[str, Any],
    evaluation_seconds: float,
) -> dict[str, Any]:
    """Write the run's MTEB results under ``output_dir/mteb`` (all files at once); return a summary.

    The files are written into a temporary folder which then replaces ``output_dir/mteb``, so a
    reader never sees half a result set.
    """
    import mteb
    from mteb.cache import ResultCache
    from mteb.results import TaskResult

    converted, not_converted = task_scores(benchmark, scores, details)
    if not_converted:
        logger.info("no MTEB task has the protocol of %s; left out of %s/", ", ".join(not_converted), MTEB_DIR)
    meta = model_meta(model_name, metadata)
    final = output_dir / MTEB_DIR
    staging = output_dir / f".{MTEB_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    cache = ResultCache(staging)
    paths = []
    for entry in converted:
        task = mteb.get_task(entry.task)
        result = TaskResult.from_task_results(task, entry.scores, evaluation_time=evaluation_seconds)
        cache.save_to_cache(result, meta)
        paths.append(cache.get_task_result_path(task_name=entry.task, model_name=meta))
    folder = None
    if converted:
        replace_folder(staging, final)
        folder = str(Path(paths[0]).parent).replace(str(staging), str(final), 1)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    return {
        "folder": folder,
        "tasks": [entry.task for entry in converted],
        "not_converted": not_converted,
        "model_name": meta.name,
        "model_revision": meta.revision,
    }

"""benchmark=mteb: mteb itself evaluates the model source, on local data or on mteb's own tasks.

Local tasks are built from the very files our harnesses read (BEIR folders, STS-B, SICK-R), so
mteb's number and ours can be compared directly (``tests/eval`` checks they agree to 1e-4). Named
mteb tasks (``tasks: [SciFact]``) need the Hugging Face hub or its local cache.

Score keys: ``mteb/<dataset or task name>/<mteb score name>`` (e.g. ``mteb/arguana/ndcg_at_10``), x100.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.benchmarks.sts import STSBenchmark
from eval.data import load_beir
from eval.report import Score

logger = logging.getLogger(__name__)

STS_SCORE_RANGE = {"STSBenchmark": (0.0, 5.0), "SICK-R": (1.0, 5.0)}


class MtebBenchmark:
    """Args:
    tasks: names of mteb tasks (``mteb.get_tasks``); they download data unless it is cached.
    beir_root: folder of BEIR datasets for ``local_beir``.
    local_beir: BEIR datasets (names under ``beir_root``, or folders) run as local mteb retrieval tasks.
    ignore_identical_ids: BEIR's rule for the local retrieval tasks.
    sts_root: SentEval ``data/downstream`` folder for ``local_sts``.
    local_sts: any of ``STSBenchmark``, ``SICK-R`` run as local mteb STS tasks.
    """

    name = "mteb"

    def __init__(
        self,
        tasks: Sequence[str] = (),
        beir_root: str = "../shared/data/beir",
        local_beir: Sequence[str] = (),
        ignore_identical_ids: bool = True,
        sts_root: str = "../shared/data/senteval",
        local_sts: Sequence[str] = (),
    ) -> None:
        if not (tasks or local_beir or local_sts):
            raise ValueError("benchmark=mteb needs tasks, local_beir or local_sts (all are empty)")
        self.tasks = list(tasks)
        self.beir_root = resolve_data_path(beir_root)
        self.local_beir = list(local_beir)
        self.ignore_identical_ids = ignore_identical_ids
        self.sts = STSBenchmark(sts_root, list(local_sts)) if local_sts else None

    def run(self, context: Context) -> BenchmarkOutput:
        from eval.mteb_adapter import evaluate, local_retrieval_task, local_sts_task, source_encoder

        encoder = context.require_dense(self.name)
        built: list[tuple[str, object]] = []  # (our dataset label, mteb task)
        files = {}
        for dataset in self.local_beir:
            folder = resolve_data_path(dataset) if "/" in dataset else self.beir_root / dataset
            data = load_beir(folder)
            files.update({f"{data.name}/{label}": path for label, path in data.files.items()})
            built.append((data.name, local_retrieval_task(data, self.ignore_identical_ids)))
        for dataset in self.sts.datasets if self.sts else []:
            triples, dataset_files = self.sts.load(dataset)
            files.update(dataset_files)
            low, high = STS_SCORE_RANGE[dataset]
            built.append((dataset, local_sts_task(dataset, triples, low, high)))
        if self.tasks:
            import mteb

            for task in mteb.get_tasks(tasks=self.tasks):
                built.append((task.metadata.name, task))
        model = source_encoder(encoder, context.model_name)
        labels = {task.metadata.name: label for label, task in built}
        try:
            results = evaluate(model, [task for _, task in built], show_progress=context.show_progress)
        except Exception as error:  # mteb wraps hub failures in many types
            if self.tasks:
                raise RuntimeError(
                    f"mteb could not run {self.tasks}: {error}. Named mteb tasks need the Hugging Face hub "
                    "(or its cache); offline, use benchmark.local_beir / benchmark.local_sts"
                ) from error
            raise
        scores = []
        details = {}
        for task_name, values in results.items():
            label = labels.get(task_name, task_name)
            main = next(task.metadata.main_score for _, task in built if task.metadata.name == task_name)
            scores.append(Score(f"mteb/{label}/{main}", 100 * values["main_score"], main=True))
            details[label] = {k: v for k, v in values.items() if k != "main_score"}
        return BenchmarkOutput(scores=scores, data_files=files, details=details)

"""STS: Spearman correlation (x100) of cosine similarity with human scores, MTEB's protocol.

Datasets: ``STSBenchmark`` (STS-B test, 1,379 pairs) and ``SICK-R`` (all 9,927 SICK pairs: train,
trial and test together, as MTEB's SICK-R test set), read from SentEval's ``data/downstream`` layout.
"""

from __future__ import annotations

import logging

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.metrics import paired_cosine, spearman
from eval.report import Score
from pairdata.senteval import SICK_FILES, STSB_FILES, read_sick, read_sts_benchmark

logger = logging.getLogger(__name__)

DATASETS = ("STSBenchmark", "SICK-R")


class STSBenchmark:
    """Args:
    data_root: SentEval's ``data/downstream`` folder (``../shared/data/senteval`` by default).
    datasets: any of ``STSBenchmark`` and ``SICK-R``.
    split: ``test`` (MTEB's protocol) or ``dev`` (STS-B's dev split, for evaluation during training;
        scores keyed ``sts/STSBenchmark-dev/...``).
    """

    name = "sts"

    def __init__(
        self, data_root: str, datasets: list[str] | tuple[str, ...] = DATASETS, split: str = "test",
        task: str | None = None,
    ) -> None:  # fmt: skip
        unknown = [d for d in datasets if d not in DATASETS]
        if unknown:
            raise ValueError(f"unknown STS datasets {unknown}; expected some of {DATASETS}")
        if split not in ("test", "dev"):
            raise ValueError(f"STS split must be test or dev, got {split!r}")
        if split == "dev" and "SICK-R" in datasets:
            raise ValueError("SICK-R has no dev split in MTEB's protocol (all 9,927 pairs are its test set)")
        self.data_root = resolve_data_path(data_root)
        self.datasets = list(datasets)
        self.split = split
        self.task = task

    def load(self, dataset: str) -> tuple[list[tuple[str, str, float]], dict[str, str]]:
        """The (a, b, gold) triples of ``dataset`` and the files they came from (label -> path)."""
        if dataset == "STSBenchmark":
            files = {f"STSBenchmark/{self.split}": self.data_root / "STS" / "STSBenchmark" / STSB_FILES[self.split]}
            return read_sts_benchmark(self.data_root, self.split), files
        triples = []
        files = {}
        for split in ("train", "trial", "test"):
            triples += read_sick(self.data_root, split)
            files[f"SICK/{split}"] = self.data_root / "SICK" / SICK_FILES[split]
        return triples, files

    def run(self, context: Context) -> BenchmarkOutput:
        encoder = context.require_dense(self.name).for_task(self.task)
        scores: list[Score] = []
        files = {}
        details = {}
        for dataset in self.datasets:
            triples, dataset_files = self.load(dataset)
            files.update(dataset_files)
            a = encoder.encode([t[0] for t in triples], "symmetric", f"sts/{dataset}")
            b = encoder.encode([t[1] for t in triples], "symmetric", f"sts/{dataset}")
            gold = np.array([t[2] for t in triples])
            cosine = paired_cosine(a, b)
            value = 100 * spearman(gold, cosine)
            logger.info("%s: %d pairs, Spearman x100 %.2f", dataset, len(triples), value)
            label = dataset if self.split == "test" else f"{dataset}-{self.split}"
            scores.append(Score(f"sts/{label}/spearman", value, main=True))
            scores.append(Score(f"sts/{label}/pearson", 100 * float(np.corrcoef(gold, cosine)[0, 1])))
            details[dataset] = {"pairs": len(triples)}
        if len(self.datasets) > 1:
            mains = [s.value for s in scores if s.main]
            scores.append(Score("sts/average/spearman", float(np.mean(mains))))
        return BenchmarkOutput(scores=scores, data_files=files, details=details)

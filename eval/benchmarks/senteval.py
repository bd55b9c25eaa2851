"""SentEval linear probe (MR, CR, SUBJ, MPQA, SST-2, TREC, MRPC) with SentEval's protocol.

Two classifiers (``classifier`` in ``configs/benchmark/senteval.yaml``):

- ``pytorch`` (default): SentEval's PyTorch logistic regression with its README settings (Adam,
  batch 64, tenacity 5, epoch_size 4, L2 grid 1e-5..1e-2 as Adam weight decay), the classifier the
  references in ``configs/references`` were produced with; see ``eval/benchmarks/senteval_probe.py``.
- ``sklearn``: scikit-learn's ``LogisticRegression`` (SentEval's ``usepytorch=False`` path) with
  SentEval's sklearn grids, in this module.

Protocol (Conneau & Kiela, 2018, arXiv 1803.05449; SentEval's ``tools/validation.py``):

- MR, CR, SUBJ, MPQA: 10-fold stratified CV; in each outer fold an inner 10-fold CV over the
  training part picks the regularisation, then a classifier on the whole training part is scored
  on the held-out fold. Reported: mean test accuracy over the outer folds. sklearn grid C = 2^-2 .. 2^3.
- SST-2: regularisation chosen on dev (trained on train), then test accuracy of a train-only model.
- TREC: k-fold CV on train picks the regularisation (sklearn grid 2^-1 .. 2^5), then train on all of
  train, test on TREC_10.
- MRPC: as TREC on the features [|u - v|, u * v]; accuracy and F1 of the paraphrase class.

Samples are ordered as SentEval orders them before embedding (by token count, then label; an empty
line counts 0 tokens), since fold assignment depends on order; folds use
``StratifiedKFold(shuffle=True, random_state=seed)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from eval.benchmarks import BenchmarkOutput, Context, resolve_data_path
from eval.benchmarks import senteval_probe as probe
from eval.report import Score
from pairdata.senteval import (
    BINARY_TASK_FILES,
    MRPC_FILES,
    SST2_FILES,
    TREC_FILES,
    read_binary_task,
    read_mrpc,
    read_sst2,
    read_trec,
)

logger = logging.getLogger(__name__)

EMPTY_LINE = "."  # read_binary_task's stand-in for an empty line
TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
INNER_KFOLD_GRID = tuple(2.0**t for t in range(-2, 4))  # MR, CR, SUBJ, MPQA and SST-2
KFOLD_GRID = tuple(2.0**t for t in range(-1, 6))  # TREC and MRPC


CLASSIFIERS = ("pytorch", "sklearn")
N_CLASSES = {"TREC": 6}  # the others are binary


def _n_tokens(text: str) -> int:
    """SentEval's sort key: the number of whitespace tokens of the line.

    ``read_binary_task`` stands an empty line in as ``"."`` (what SentEval's example batchers
    encode for it); SentEval sorts it as the empty token list it is, so it counts 0 here. (No line
    of the SentEval files is a lone ``"."``: CR has 4 empty lines, MPQA 3, the others none.)
    """
    return 0 if text == EMPTY_LINE else len(text.split())


class SentEvalBenchmark:
    """Args:
    data_root: SentEval's ``data/downstream`` folder (``../shared/data/senteval``).
    tasks: any of ``MR CR SUBJ MPQA SST2 TREC MRPC``.
    classifier: ``pytorch`` (SentEval's PyTorch logistic regression, the references' protocol) or
        ``sklearn`` (``LogisticRegression``).
    kfold: folds of the outer and inner cross-validation (SentEval's README setting: 10).
    seed: fold shuffling and classifier seed (SentEval's 1111).
    l2_grid: pytorch: Adam weight-decay values; ``None`` for SentEval's 1e-5 .. 1e-2.
    batch_size, tenacity, epoch_size, max_epoch: pytorch: SentEval's classifier settings (README:
        64, 5, 4; max_epoch SentEval's default 200).
    torch_threads: pytorch: torch threads while the classifiers train (restored after); ``None``
        keeps the harness's setting (top-level ``torch_threads``).
    inner_kfold_grid: sklearn: C values for MR/CR/SUBJ/MPQA/SST-2; ``None`` for SentEval's 2^-2..2^3.
    kfold_grid: sklearn: C values for TREC/MRPC; ``None`` for SentEval's 2^-1..2^5.
    max_iter: sklearn: lbfgs iterations per fit.
    n_jobs: sklearn: parallel fits over the C grid (joblib).
    """

    name = "senteval"

    def __init__(
        self,
        data_root: str,
        tasks: Sequence[str] = TASKS,
        classifier: str = "pytorch",
        kfold: int = 10,
        seed: int = 1111,
        l2_grid: Sequence[float] | None = None,
        batch_size: int = 64,
        tenacity: int = 5,
        epoch_size: int = 4,
        max_epoch: int = 200,
        torch_threads: int | None = 1,
        inner_kfold_grid: Sequence[float] | None = None,
        kfold_grid: Sequence[float] | None = None,
        max_iter: int = 1000,
        n_jobs: int = 1,
        task: str | None = None,
    ) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown SentEval tasks {unknown}; expected some of {TASKS}")
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier={classifier!r}; expected one of {CLASSIFIERS}")
        if kfold < 2:
            raise ValueError(f"kfold={kfold} must be >= 2")
        self.data_root = resolve_data_path(data_root)
        self.tasks = list(tasks)
        self.task = task  # the task text a checkpoint's task instruction takes (SentEval's tasks are its datasets)
        self.classifier = classifier
        self.kfold = kfold
        self.seed = seed
        self.l2_grid = tuple(l2_grid or probe.L2_GRID)
        self.probe_config = probe.ProbeConfig(
            batch_size=batch_size, tenacity=tenacity, epoch_size=epoch_size, max_epoch=max_epoch, seed=seed
        )
        self.torch_threads = torch_threads
        self.inner_kfold_grid = tuple(inner_kfold_grid or INNER_KFOLD_GRID)
        self.kfold_grid = tuple(kfold_grid or KFOLD_GRID)
        self.max_iter = max_iter
        self.n_jobs = n_jobs
        self.show_progress = False

    # ----------------------------------------------------------------- protocol dispatch
    def _progress(self, task: str, total: int) -> Any:
        """A tqdm bar over the task's classifier fits (models), off unless ``show_progress``."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"senteval {task} fits", unit="fit", disable=not self.show_progress)

    def _inner_kfold(self, task: str, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """MR/CR/SUBJ/MPQA with the configured classifier."""
        if self.classifier == "sklearn":
            return self.inner_kfold(x, y)
        with self._progress(task, self.kfold * self.kfold * len(self.l2_grid) + self.kfold) as bar:
            return probe.inner_kfold(x, y, N_CLASSES.get(task, 2), self.kfold, self.probe_config, self.l2_grid, bar)

    def _split(self, task: str, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """SST-2 with the configured classifier."""
        if self.classifier == "sklearn":
            return self.split(data)
        with self._progress(task, len(self.l2_grid)) as bar:
            return probe.split(data, N_CLASSES.get(task, 2), self.probe_config, self.l2_grid, bar)

    def _kfold_then_test(
        self, task: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
    ) -> dict[str, Any]:
        """TREC/MRPC with the configured classifier (``predicted`` holds the test predictions)."""
        if self.classifier == "sklearn":
            return self.kfold_then_test(x_train, y_train, x_test, y_test)
        with self._progress(task, self.kfold * len(self.l2_grid) + 1) as bar:
            return probe.kfold_then_test(
                x_train,
                y_train,
                x_test,
                y_test,
                N_CLASSES.get(task, 2),
                self.kfold,
                self.probe_config,
                self.l2_grid,
                bar,
            )

    # ----------------------------------------------------------------- sklearn classifier
    def _classifier(self, c: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=self.max_iter, random_state=self.seed)

    def _cv_accuracy(self, x: np.ndarray, y: np.ndarray, c: float) -> float:
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(n_splits=self.kfold, shuffle=True, random_state=self.seed)
        scores = [
            self._classifier(c).fit(x[train], y[train]).score(x[test], y[test]) for train, test in folds.split(x, y)
        ]
        return round(100 * float(np.mean(scores)), 2)  # rounded as SentEval does before its argmax

    def _best_c(self, x: np.ndarray, y: np.ndarray, grid: Sequence[float]) -> tuple[float, float]:
        from joblib import Parallel, delayed

        scores = Parallel(n_jobs=self.n_jobs)(delayed(self._cv_accuracy)(x, y, c) for c in grid)
        best = int(np.argmax(scores))  # first maximum, as np.argmax in SentEval
        return grid[best], scores[best]

    def inner_kfold(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """MR/CR/SUBJ/MPQA: outer k-fold test accuracy with C picked by an inner k-fold."""
        from sklearn.model_selection import StratifiedKFold

        outer = StratifiedKFold(n_splits=self.kfold, shuffle=True, random_state=self.seed)
        dev, test, chosen = [], [], []
        for train, held_out in outer.split(x, y):
            c, dev_accuracy = self._best_c(x[train], y[train], self.inner_kfold_grid)
            classifier = self._classifier(c).fit(x[train], y[train])
            test.append(round(100 * classifier.score(x[held_out], y[held_out]), 2))
            dev.append(dev_accuracy)
            chosen.append(c)
        return {"accuracy": float(np.mean(test)), "dev_accuracy": float(np.mean(dev)), "C": chosen}

    def split(self, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        """SST-2: C picked on dev by a train-only model; test accuracy of that model."""
        (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = data["train"], data["dev"], data["test"]
        dev_scores = [
            round(100 * self._classifier(c).fit(x_train, y_train).score(x_dev, y_dev), 2) for c in self.inner_kfold_grid
        ]
        best = int(np.argmax(dev_scores))
        c = self.inner_kfold_grid[best]
        accuracy = 100 * self._classifier(c).fit(x_train, y_train).score(x_test, y_test)
        return {"accuracy": float(accuracy), "dev_accuracy": dev_scores[best], "C": c}

    def kfold_then_test(self, x_train, y_train, x_test, y_test) -> dict[str, Any]:
        """TREC/MRPC: C picked by k-fold on train; a model on all of train scored on test."""
        c, dev_accuracy = self._best_c(x_train, y_train, self.kfold_grid)
        classifier = self._classifier(c).fit(x_train, y_train)
        predicted = classifier.predict(x_test)
        return {
            "accuracy": 100 * float(np.mean(predicted == y_test)),
            "dev_accuracy": dev_accuracy,
            "C": c,
            "predicted": predicted,
        }

    # ----------------------------------------------------------------- tasks
    def _encode(self, context: Context, texts: list[str], task: str) -> np.ndarray:
        encoder = context.require_dense(self.name).for_task(self.task)
        vectors = encoder.encode(texts, "symmetric", f"senteval/{task}")
        return vectors.astype(np.float64)  # sklearn's solvers are tuned for float64

    def run_task(self, task: str, context: Context) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics x100, files read) of one task."""
        root = self.data_root
        if task in BINARY_TASK_FILES:
            samples = sorted(read_binary_task(root, task), key=lambda s: (_n_tokens(s[0]), s[1]))
            x = self._encode(context, [s[0] for s in samples], task)
            result = self._inner_kfold(task, x, np.array([s[1] for s in samples]))
            files = {f"{task}/{p.split('/')[-1]}": root / p for p in BINARY_TASK_FILES[task]}
            return result, files
        if task == "SST2":
            data = {}
            for split in ("train", "dev", "test"):
                samples = sorted(read_sst2(root, split), key=lambda s: (_n_tokens(s[0]), s[1]))
                x = self._encode(context, [s[0] for s in samples], task)
                data[split] = (x, np.array([s[1] for s in samples]))
            files = {f"SST2/{name}": root / "SST" / "binary" / name for name in SST2_FILES.values()}
            return self._split(task, data), files
        if task == "TREC":
            splits = {}
            raw = {split: read_trec(root, split) for split in ("train", "test")}
            classes = sorted({label for _, label in raw["train"]})  # ABBR=0, DESC=1, ... as SentEval
            for split in ("train", "test"):
                indexed = [(text, classes.index(label)) for text, label in raw[split]]
                samples = sorted(indexed, key=lambda s: (_n_tokens(s[0]), s[1]))
                splits[split] = (
                    self._encode(context, [s[0] for s in samples], task),
                    np.array([s[1] for s in samples]),
                )
            result = self._kfold_then_test(task, *splits["train"], *splits["test"])
            result.pop("predicted")
            files = {f"TREC/{name}": root / "TREC" / name for name in TREC_FILES.values()}
            return result, files
        # MRPC: features [|u - v|, u * v]
        from sklearn.metrics import f1_score

        splits = {}
        for split in ("train", "test"):
            samples = sorted(read_mrpc(root, split), key=lambda s: (_n_tokens(s[0]), _n_tokens(s[1]), s[2]))
            u = self._encode(context, [" ".join(s[0].split()) for s in samples], task)
            v = self._encode(context, [" ".join(s[1].split()) for s in samples], task)
            splits[split] = (np.hstack([np.abs(u - v), u * v]), np.array([s[2] for s in samples]))
        result = self._kfold_then_test(task, *splits["train"], *splits["test"])
        f1 = 100 * float(f1_score(splits["test"][1], result.pop("predicted")))
        result["f1"] = round(f1, 2) if self.classifier == "pytorch" else f1  # SentEval rounds F1 to 2 decimals
        files = {f"MRPC/{name}": root / "MRPC" / name for name in MRPC_FILES.values()}
        return result, files

    def run(self, context: Context) -> BenchmarkOutput:
        self.show_progress = context.show_progress
        if self.classifier == "pytorch":
            import torch

            threads = torch.get_num_threads()
            if self.torch_threads is not None:
                torch.set_num_threads(self.torch_threads)
            try:
                return self._run(context)
            finally:
                torch.set_num_threads(threads)
        from threadpoolctl import threadpool_limits

        # One BLAS thread per fit (with float64 features): measured 0.03 s against 0.33 s per small
        # lbfgs fit (3,400 x 384) with default BLAS threads and float32, and 8 s under heavy load.
        with threadpool_limits(limits=1):
            return self._run(context)

    def _run(self, context: Context) -> BenchmarkOutput:
        scores: list[Score] = []
        files: dict[str, Any] = {}
        details: dict[str, Any] = {}
        for task in self.tasks:
            result, task_files = self.run_task(task, context)
            files.update(task_files)
            details[task] = {key: value for key, value in result.items() if key not in ("accuracy", "f1")}
            details[task]["classifier"] = self.classifier
            scores.append(Score(f"senteval/{task}/accuracy", result["accuracy"], main=True))
            if "f1" in result:
                scores.append(Score(f"senteval/{task}/f1", result["f1"]))
            regularisation = ("C", result["C"]) if "C" in result else ("l2reg", result["l2reg"])
            logger.info("%s: accuracy %.2f (%s %s)", task, result["accuracy"], *regularisation)
        if len(self.tasks) > 1:
            mean = float(np.mean([s.value for s in scores if s.key.endswith("/accuracy")]))
            # "average" is the 7-task average that references mean; a subset's average is named apart.
            label = "average" if sorted(self.tasks) == sorted(TASKS) else "average_subset"
            scores.append(Score(f"senteval/{label}/accuracy", mean))
        return BenchmarkOutput(scores=scores, data_files=files, details=details)

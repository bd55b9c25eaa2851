"""Validation while training: the held-out pairs' loss and accuracy, the benchmarks scored while training
(``trainer.eval_benchmarks``) and the ``best/`` checkpoint they select (:class:`Validator` runs all three).

Each entry of ``trainer.eval_benchmarks`` is a benchmark config (``_target_`` and its arguments, as in
``configs/benchmark/``), usually a cheap subset: STS-B dev (``split: dev``), 200 ArguAna queries over
a fixed document sample (``max_queries``, ``max_documents``), a few CodeSearchNet valid groups
(``split: valid``, ``max_groups``). They run on the main process at step 0, every
``trainer.eval_every`` steps and at the end, on the model in memory (``eval.sources.EmbedderSource``,
no cache), while the other processes wait. Scores are logged as ``eval/<entry>/<score key>`` to
``metrics.jsonl`` and the trackers. With ``trainer.best_metric`` (one of those keys, or a held-out
``val_*`` metric) the best step's embedder is kept in ``OUTPUT/best/`` (atomically, with ``best.json``).

The evaluation reads no random state of the run, so an exact resume stays exact. It needs the whole
model on the main process: with FSDP or DeepSpeed ZeRO-3 (sharded weights) leave it off.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from models import truncate_embeddings
from pairdata import Pair
from pairdata.store import replace_folder
from train.batching import HeldOut
from train.distributed import full_tensor
from train.losses import InfoNCE

logger = logging.getLogger(__name__)

BEST_DIR = "best"
BEST_RECORD = "best.json"
PREFIX = "eval/"


class TrainingEvaluator:
    """The configured benchmarks, built once, scored on the embedder being trained.

    Args:
        benchmarks: entry name -> benchmark config (a ``_target_`` mapping).
        max_length: tokens per input when encoding (the training length unless the entry sets one).
        batch_size: texts per forward pass.
        run_name: names the scores' model and keys their fingerprint.
    """

    def __init__(self, benchmarks: Mapping[str, Any], max_length: int, batch_size: int, run_name: str) -> None:
        from hydra.utils import instantiate

        self.entries: dict[str, tuple[Any, int]] = {}
        for name, config in benchmarks.items():
            config = dict(config)
            length = int(config.pop("max_length", max_length))
            try:
                self.entries[name] = (instantiate(config, _convert_="all"), length)
            except Exception as error:
                raise ValueError(f"trainer.eval_benchmarks.{name}: {error}") from error
        self.batch_size = batch_size
        self.run_name = run_name

    def evaluate(self, embedder: Any, step: int) -> dict[str, float]:
        """``eval/<entry>/<score key>`` -> value (x100, as the harness reports) for every entry."""
        from eval.benchmarks import Context
        from eval.sources import EmbedderSource

        scores: dict[str, float] = {}
        was_training = embedder.training
        embedder.eval()
        try:
            for name, (benchmark, length) in self.entries.items():
                started = time.perf_counter()
                source = EmbedderSource(embedder, f"{self.run_name}@{step}", f"training|{self.run_name}|{id(embedder)}"
                                        f"|{step}|{length}", batch_size=self.batch_size, max_length=length)  # fmt: skip
                context = Context.for_source(source, source.name, cache_dir=None, show_progress=False)
                output = benchmark.run(context)
                for score in output.scores:
                    scores[f"{PREFIX}{name}/{score.key}"] = float(score.value)
                logger.info("step %d, %s: %s (%.1fs)", step, name, ", ".join(f"{s.key} {s.value:.2f}" for s in
                            output.scores if s.main), time.perf_counter() - started)  # fmt: skip
        finally:
            embedder.train(was_training)
        return scores


class BestCheckpoint:
    """Keeps ``OUTPUT/best/``: the embedder of the step with the best ``metric`` so far.

    Args:
        output_dir: the run folder.
        metric: a key of the logged scores (``eval/...`` or ``val_loss`` / ``val_accuracy``).
        mode: ``max`` or ``min``.
    """

    def __init__(self, output_dir: Path, metric: str, mode: str) -> None:
        self.folder = output_dir / BEST_DIR
        self.metric = metric
        self.mode = mode
        self.value: float | None = None
        self.step: int | None = None
        record = self.folder / BEST_RECORD
        if record.is_file():  # a resumed run keeps the best it had
            saved = json.loads(record.read_text())
            if saved.get("metric") == metric and saved.get("mode") == mode:
                self.value, self.step = float(saved["value"]), int(saved["step"])

    def offer(self, scores: Mapping[str, float], step: int, embedder: Any, run_config: str) -> bool:
        """Save ``embedder`` as the best when ``scores[metric]`` beats the best so far; True if it did."""
        if self.metric not in scores:
            raise KeyError(
                f"trainer.best_metric={self.metric!r} is not among the scores at step {step}: {sorted(scores)}"
            )
        value = float(scores[self.metric])
        better = self.value is None or (value > self.value if self.mode == "max" else value < self.value)
        if not better:
            return False
        staging = self.folder.with_name(f".{BEST_DIR}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        embedder.save_pretrained(staging)
        (staging / "train_config.yaml").write_text(run_config)
        record = {"metric": self.metric, "mode": self.mode, "value": value, "step": step, "scores": dict(scores)}
        (staging / BEST_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        replace_folder(staging, self.folder)
        logger.info("best %s %.4f at step %d: %s", self.metric, value, step, self.folder)
        self.value, self.step = value, step
        return True


class Validator:
    """Held-out metrics (every process), the training-time benchmarks and the best checkpoint (main process).

    Args:
        accelerator: the run's accelerator (logging, and the wait while the main process scores benchmarks).
        validation: the held-out (xs, ys) texts.
        sides: the x and y side names.
        settings: the trainer settings (length, batch, benchmarks, best metric).
        run_name: names the benchmark scores' model.
        output_dir: the run folder (``best/`` lives there).
        metrics_file: where the scores are written.
        run_config: the resolved config, saved with the best checkpoint.
        prefix_dims: Matryoshka sizes whose prefix accuracy is also reported.
    """

    def __init__(
        self, accelerator: Any, validation: tuple[Sequence[str], Sequence[str]], sides: tuple[str, str],
        settings: Any, run_name: str, output_dir: Path, metrics_file: Any, run_config: str,
        prefix_dims: Sequence[int] = (),
    ) -> None:  # fmt: skip
        self.accelerator = accelerator
        self.validation = validation
        self.sides = sides
        self.settings = settings
        self.metrics_file = metrics_file
        self.run_config = run_config
        self.prefix_dims = tuple(prefix_dims)
        main = accelerator.is_main_process
        self.evaluator = None
        if main and settings.eval_benchmarks:
            self.evaluator = TrainingEvaluator(settings.eval_benchmarks, settings.max_length, settings.batch_size,
                                               run_name)  # fmt: skip
        self.best = None
        if main and settings.best_metric:
            self.best = BestCheckpoint(output_dir, settings.best_metric, settings.best_mode)

    def __call__(self, embedder: Any, step: int) -> dict[str, float]:
        """Score ``embedder`` at ``step``; returns the held-out metrics (``val_loss``, ``val_accuracy``, ...)."""
        xs, ys = self.validation
        scores = {}
        if xs:
            scores = validation_metrics(embedder, xs, ys, self.sides, self.settings.max_length,
                                        self.settings.batch_size, self.prefix_dims)  # fmt: skip
        benchmarks = self.evaluator.evaluate(embedder, step) if self.evaluator is not None else {}
        if scores or benchmarks:
            self.metrics_file.write({"step": step, **scores, **benchmarks})
            logged = {f"val/{key.removeprefix('val_')}": value for key, value in scores.items()}
            self.accelerator.log({**logged, **benchmarks}, step=step)
        if self.best is not None:
            self.best.offer({**scores, **benchmarks}, step, embedder, self.run_config)
        if self.settings.eval_benchmarks or self.settings.best_metric:
            self.accelerator.wait_for_everyone()  # the other processes wait for the main one's benchmarks
        return scores


def split_validation(pairs: Sequence[Pair], count: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out ``count`` pairs (chosen with ``seed``, as a run does) for validation; the rest is for training."""
    held = HeldOut(len(pairs), count, seed).held.tolist()
    chosen = set(held)
    return [p for i, p in enumerate(pairs) if i not in chosen], [pairs[i] for i in held]


@torch.no_grad()
def validation_metrics(
    embedder: Any,
    xs: Sequence[str],
    ys: Sequence[str],
    sides: tuple[str, str],
    max_length: int,
    batch_size: int,
    prefix_dims: Sequence[int] = (),
) -> dict[str, float]:
    """Loss and top-1 accuracy over the held-out pairs as ONE batch (every other pair a negative),
    so values are comparable across steps; run identically on every process. For each of
    ``prefix_dims`` (Matryoshka sizes) also the accuracy of the re-normalised prefix."""
    x = embedder.encode(list(xs), sides[0], batch_size=batch_size, max_length=max_length)
    y = embedder.encode(list(ys), sides[1], batch_size=batch_size, max_length=max_length)
    scale = full_tensor(embedder.logit_scale()).detach().float().cpu()
    loss = InfoNCE()
    out = loss(x, y, scale)
    scores = {"val_loss": out["contrastive_loss"].item(), "val_accuracy": out["accuracy"].item()}
    for dim in prefix_dims:
        if dim < x.shape[1]:
            prefix = loss(truncate_embeddings(x, dim), truncate_embeddings(y, dim), scale)
            scores[f"val_accuracy@{dim}"] = prefix["accuracy"].item()
    return scores

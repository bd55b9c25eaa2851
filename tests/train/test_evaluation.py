"""Benchmarks during training: logged at every validation, best/ kept atomically, the training itself unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import compose_train_config, require_shared_data
from tests.train.test_training import tiny_overrides
from train.contrastive import train


def _with_benchmarks(tmp_path: Path, *extra: str) -> list[str]:
    data = require_shared_data()
    sts = (
        "{_target_: eval.benchmarks.sts.STSBenchmark, data_root: "
        + str(data / "senteval")
        + ", datasets: [STSBenchmark],"
        " split: dev}"
    )
    arguana = (
        "{_target_: eval.benchmarks.beir.BeirBenchmark, data_root: " + str(data / "beir") + ", datasets: [arguana],"
        " max_queries: 5, max_documents: 40, max_length: 24}"
    )
    return [f"trainer.eval_benchmarks={{sts_dev: {sts}, arguana_small: {arguana}}}", "trainer.eval_every=2", *extra]


def test_benchmarks_are_logged_and_the_best_step_is_kept(tmp_path: Path) -> None:
    from models import DecoderEmbedder

    metric = "eval/arguana_small/beir/arguana-q5-d40/ndcg@10"
    overrides = tiny_overrides(
        tmp_path, steps=4, extra=tuple(_with_benchmarks(tmp_path, f"trainer.best_metric={metric}"))
    )
    train(compose_train_config(overrides, tmp_path), tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evaluated = {row["step"]: row for row in logged if metric in row}
    assert sorted(evaluated) == [0, 2, 4]
    assert all("eval/sts_dev/sts/STSBenchmark-dev/spearman" in row for row in evaluated.values())
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    values = {step: row[metric] for step, row in evaluated.items()}
    first_best = max(values, key=lambda step: (values[step], -step))  # the earliest step with the highest value
    assert best["step"] == first_best and best["value"] == pytest.approx(values[first_best])
    assert DecoderEmbedder.from_pretrained(tmp_path / "run" / "best").embedding_dim > 0
    assert not list((tmp_path / "run").glob(".best*"))


def test_evaluating_during_training_leaves_the_training_unchanged(tmp_path: Path) -> None:
    def final_weights(run: Path) -> dict:
        return load_file(str(run / "checkpoints" / "step-000004" / "training_state" / "model.safetensors"))

    plain = tiny_overrides(tmp_path, steps=4, extra=("trainer.eval_every=2",))
    train(compose_train_config(plain, tmp_path), tmp_path / "plain")
    evaluated = tiny_overrides(tmp_path, steps=4, extra=tuple(_with_benchmarks(tmp_path)))
    train(compose_train_config(evaluated, tmp_path), tmp_path / "evaluated")
    left, right = final_weights(tmp_path / "plain"), final_weights(tmp_path / "evaluated")
    assert left.keys() == right.keys() and all((left[k] == right[k]).all() for k in left)


def test_a_best_metric_without_benchmarks_is_refused(tmp_path: Path) -> None:
    overrides = tiny_overrides(tmp_path, extra=("trainer.best_metric=eval/x/beir/arguana/ndcg@10",))
    with pytest.raises(ValueError, match="names a benchmark score but trainer.eval_benchmarks is empty"):
        train(compose_train_config(overrides, tmp_path), tmp_path / "run")

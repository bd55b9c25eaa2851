"""SentEval protocol pieces on synthetic features (fast), and the SentEval-layout readers' counts."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import SHARED_DATA

from eval.benchmarks.senteval import SentEvalBenchmark


def _separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 8)) + 3.0 * y[:, None]
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_inner_kfold_split_and_kfold_protocols_on_separable_data(tmp_path) -> None:
    bench = SentEvalBenchmark(str(tmp_path), tasks=["MR"], kfold=3)
    x, y = _separable(120, 0)
    result = bench.inner_kfold(x, y)
    assert result["accuracy"] > 90 and len(result["C"]) == 3
    assert all(c in bench.inner_kfold_grid for c in result["C"])
    x_dev, y_dev = _separable(40, 1)
    x_test, y_test = _separable(40, 2)
    split = bench.split({"train": (x, y), "dev": (x_dev, y_dev), "test": (x_test, y_test)})
    assert split["accuracy"] > 90 and split["C"] in bench.inner_kfold_grid
    then_test = bench.kfold_then_test(x, y, x_test, y_test)
    assert then_test["C"] in bench.kfold_grid and then_test["accuracy"] > 90


def test_unknown_task_is_rejected_with_the_allowed_names(tmp_path) -> None:
    with pytest.raises(ValueError, match="MPQA"):
        SentEvalBenchmark(str(tmp_path), tasks=["SST5"])


@pytest.mark.skipif(not (SHARED_DATA / "senteval").is_dir(), reason="../shared/data is absent")
def test_senteval_readers_give_the_published_counts() -> None:
    from pairdata.senteval import read_binary_task, read_sick, read_sst2, read_trec

    root = SHARED_DATA / "senteval"
    counts = {task: len(read_binary_task(root, task)) for task in ("MR", "CR", "SUBJ", "MPQA")}
    assert counts == {"MR": 10662, "CR": 3775, "SUBJ": 10000, "MPQA": 10606}
    assert [len(read_sst2(root, s)) for s in ("train", "dev", "test")] == [67349, 872, 1821]
    assert [len(read_trec(root, s)) for s in ("train", "test")] == [5452, 500]
    assert sum(len(read_sick(root, s)) for s in ("train", "trial", "test")) == 9927

"""SentEval's PyTorch probe (eval/benchmarks/senteval_probe.py) on small synthetic data (fast).

The batched, hand-written fits are checked against a plain one-model-at-a-time fit written here
from the protocol's description with ``nn.Linear``, ``nn.CrossEntropyLoss`` and ``torch.optim.Adam``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from eval.benchmarks import senteval_probe as probe
from eval.benchmarks.senteval import SentEvalBenchmark, _n_tokens


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest (and immune to a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, dim: int, n_classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    x = rng.normal(size=(n, dim)) + spread * np.eye(n_classes, dim)[y]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _plain_fit(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    dev: np.ndarray | None,
    l2reg: float,
    n_classes: int,
    config: probe.ProbeConfig,
) -> tuple[float, int, torch.Tensor]:
    """One model the straightforward way: (best dev accuracy, passes made, weights with bias row)."""
    rng = np.random.RandomState(config.seed)
    if dev is None:
        order = rng.permutation(len(train))
        cut = int(0.05 * len(train))
        dev, train = train[order[:cut]], train[order[cut:]]
    torch.manual_seed(config.seed)
    model = torch.nn.Linear(x.shape[1], n_classes)
    loss = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), weight_decay=l2reg)
    x_train, y_train = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    x_dev, y_dev = torch.from_numpy(x[dev]), torch.from_numpy(y[dev])
    best, best_model, misses, passes = -1, model, 0, 0
    while passes <= config.max_epoch:
        for _ in range(config.epoch_size):
            order = rng.permutation(len(train))
            for start in range(0, len(train), config.batch_size):
                rows = torch.from_numpy(order[start : start + config.batch_size])
                optimizer.zero_grad()
                loss(model(x_train[rows]), y_train[rows]).backward()
                optimizer.step()
        passes += config.epoch_size
        with torch.no_grad():
            correct = int((model(x_dev).argmax(dim=1) == y_dev).sum())
        if correct > best:
            best, best_model = correct, copy.deepcopy(model)
        elif misses >= config.tenacity:
            break
        else:
            misses += 1
    weights = torch.cat([best_model.weight.detach().T, best_model.bias.detach()[None]])
    return best / len(dev), passes, weights


def test_batched_fits_equal_plain_nn_linear_adam_fits_including_early_stop_and_split() -> None:
    x, y = _blobs(200, 6, 3, spread=2.0, seed=0)
    config = probe.ProbeConfig(batch_size=32, max_epoch=32)
    grid = (1e-5, 1e-2)
    fits = [
        probe.Fit(np.arange(0, 160), np.arange(160, 200), grid),  # 5 batches per pass
        probe.Fit(np.arange(30, 200), np.arange(0, 30), grid),  # 6 batches, the last one shorter
        probe.Fit(np.arange(0, 130), None, grid),  # validation_split: 6 dev rows, 4 batches per pass
    ]
    results = probe.fit_probes(x, y, fits, 3, config)
    passes = []
    for fit, result in zip(fits, results, strict=True):
        for i, l2reg in enumerate(grid):
            accuracy, n_passes, weights = _plain_fit(x, y, fit.train, fit.dev, l2reg, 3, config)
            assert result.dev_accuracy[i] == accuracy
            assert result.passes[i] == n_passes
            torch.testing.assert_close(result.weights[i], weights, atol=2e-6, rtol=1e-5)
            passes.append(n_passes)
    assert min(passes) < config.max_epoch, "no fit stopped early: the test does not exercise tenacity"


def test_early_stopping_counts_non_improving_rounds_cumulatively() -> None:
    rule = probe.EarlyStopping((1,), tenacity=2)
    history = []
    for correct in (5, 7, 7, 8, 8, 6, 9, 9):
        improved, stopping = rule.update(np.array([correct]))
        history.append((bool(improved[0]), bool(stopping[0])))
    # 7 and 8 repeat: misses 1 and 2 (never reset by the improvement to 8); the third miss (6) stops it.
    assert history[:6] == [(True, False), (True, False), (False, False), (True, False), (False, False), (False, True)]
    assert history[6:] == [(False, False), (False, False)]  # stopped: frozen, 9 is not taken
    assert rule.best[0] == 8 and rule.stopped[0]


def test_tenacity_zero_stops_at_the_first_non_improving_round() -> None:
    rule = probe.EarlyStopping((2,), tenacity=0)
    rule.update(np.array([3, 3]))
    _, stopping = rule.update(np.array([3, 4]))
    assert stopping.tolist() == [True, False]


def test_same_seed_same_models_other_seed_other_models() -> None:
    x, y = _blobs(200, 5, 2, spread=1.0, seed=1)
    fits = [
        probe.Fit(np.arange(150), np.arange(150, 200), (1e-5, 1e-2)),
        probe.Fit(np.arange(50, 200), None, (1e-3, 1e-3)),
    ]
    config = probe.ProbeConfig(max_epoch=12)
    first = probe.fit_probes(x, y, fits, 2, config)
    second = probe.fit_probes(x, y, fits, 2, config)
    other = probe.fit_probes(x, y, fits, 2, probe.ProbeConfig(max_epoch=12, seed=7))
    for a, b, c in zip(first, second, other, strict=True):
        assert a.dev_accuracy == b.dev_accuracy and a.passes == b.passes
        assert all(torch.equal(wa, wb) for wa, wb in zip(a.weights, b.weights, strict=True))
        assert not any(torch.equal(wa, wc) for wa, wc in zip(a.weights, c.weights, strict=True))


def test_a_fit_is_the_same_alone_or_batched_with_others() -> None:
    x, y = _blobs(240, 5, 2, spread=1.0, seed=2)
    config = probe.ProbeConfig(max_epoch=16)
    target = probe.Fit(np.arange(100, 240), np.arange(0, 40), (1e-4, 1e-2))
    (alone,) = probe.fit_probes(x, y, [target], 2, config)
    batched = probe.fit_probes(x, y, [probe.Fit(np.arange(0, 230), None, (1e-5, 1e-3)), target], 2, config)[1]
    assert alone.dev_accuracy == batched.dev_accuracy and alone.passes == batched.passes
    for a, b in zip(alone.weights, batched.weights, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_the_global_random_state_is_left_alone() -> None:
    np.random.seed(3)
    torch.manual_seed(3)
    x, y = _blobs(80, 4, 2, spread=2.0, seed=3)
    probe.fit_probes(x, y, [probe.Fit(np.arange(60), np.arange(60, 80), (1e-3,))], 2, probe.ProbeConfig(max_epoch=4))
    after = np.random.rand(), float(torch.rand(1))
    np.random.seed(3)
    torch.manual_seed(3)
    assert after == (np.random.rand(), float(torch.rand(1)))


def test_initial_weights_are_nn_linear_after_manual_seed() -> None:
    torch.manual_seed(1111)
    layer = torch.nn.Linear(7, 3)
    weights = probe.initial_weights(7, 3, 1111)
    assert torch.equal(weights[:7], layer.weight.detach().T) and torch.equal(weights[7], layer.bias.detach())


def test_grid_choice_and_rounding_follow_senteval() -> None:
    assert probe.L2_GRID == (1e-05, 0.0001, 0.001, 0.01)
    assert probe.choose([80.1, 80.3, 80.3, 79.0]) == 1  # first best
    assert probe._mean_rounded([0.8, 0.81, 0.8125]) == 80.75
    assert probe._rounded(1 / 3) == 33.33


def test_protocols_on_separable_data_pick_grid_values_and_round() -> None:
    x, y = _blobs(600, 8, 2, spread=2.0, seed=4)
    x = 5 * x  # larger logits per step: fewer steps to learn
    config = probe.ProbeConfig(batch_size=16, max_epoch=12)
    inner = probe.inner_kfold(x, y, 2, 3, config)
    assert inner["accuracy"] > 85 and len(inner["l2reg"]) == 3 and set(inner["l2reg"]) <= set(probe.L2_GRID)
    assert inner["accuracy"] == round(inner["accuracy"], 2) and len(inner["fold_accuracy"]) == 3
    x_dev, y_dev = _blobs(100, 8, 2, spread=2.0, seed=5)
    x_test, y_test = _blobs(100, 8, 2, spread=2.0, seed=6)
    split = probe.split({"train": (x, y), "dev": (5 * x_dev, y_dev), "test": (5 * x_test, y_test)}, 2, config)
    assert split["accuracy"] > 85 and split["l2reg"] in probe.L2_GRID
    then_test = probe.kfold_then_test(x, y, 5 * x_test, y_test, 2, 3, config)
    assert then_test["accuracy"] > 85 and then_test["l2reg"] in probe.L2_GRID
    assert then_test["predicted"].shape == y_test.shape


def test_pytorch_and_sklearn_paths_agree_roughly_on_a_separable_problem(tmp_path) -> None:
    # Enough rows that the final fits' 5% dev split (50 rows) is a fair early-stopping set.
    x, y = _blobs(1500, 8, 2, spread=2.0, seed=7)
    x = 10 * x
    pytorch = SentEvalBenchmark(str(tmp_path), tasks=["MR"], kfold=3, max_epoch=20)
    sklearn = SentEvalBenchmark(str(tmp_path), tasks=["MR"], kfold=3, classifier="sklearn", inner_kfold_grid=[1.0, 4.0])
    ours = pytorch._inner_kfold("MR", x, y)
    theirs = sklearn._inner_kfold("MR", x.astype(np.float64), y)
    assert ours["accuracy"] > 88 and theirs["accuracy"] > 88
    assert abs(ours["accuracy"] - theirs["accuracy"]) < 3


def test_benchmark_settings_are_checked_and_sort_key_counts_an_empty_line_as_zero(tmp_path) -> None:
    with pytest.raises(ValueError, match="sklearn"):
        SentEvalBenchmark(str(tmp_path), classifier="liblinear")
    bench = SentEvalBenchmark(str(tmp_path))
    assert bench.classifier == "pytorch" and bench.l2_grid == probe.L2_GRID
    assert (bench.probe_config.batch_size, bench.probe_config.tenacity, bench.probe_config.epoch_size) == (64, 5, 4)
    assert _n_tokens(".") == 0 and _n_tokens("a good  film") == 3

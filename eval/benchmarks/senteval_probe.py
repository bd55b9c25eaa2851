"""SentEval's PyTorch logistic-regression probe and its three validation protocols, on CPU.

This module owns the ``classifier: pytorch`` path of ``eval/benchmarks/senteval.py``: the protocol
that the all-MiniLM-L6-v2 references in ``configs/references/published.yaml`` were produced with
(SentEval, facebookresearch/SentEval @5d6dc11, ``usepytorch=True`` and the README's classifier
settings ``nhid 0, optim adam, batch_size 64, tenacity 5, epoch_size 4``). It is our own
implementation of the facts of that protocol, not SentEval's code:

- The classifier is one linear layer (``nn.Linear`` initialised right after ``torch.manual_seed``),
  trained on the mean cross-entropy of mini-batches of 64 with Adam (lr 1e-3, betas 0.9/0.999,
  eps 1e-8) whose ``weight_decay`` (coupled L2, on weight and bias alike) is the regularisation
  being chosen: the grid is ``10**t for t in -5..-2``. SentEval sets ``loss_fn.size_average =
  False`` after building ``nn.CrossEntropyLoss()``. Modern PyTorch (since losses take
  ``reduction``, 0.4.1) reads ``size_average`` only in the constructor, so that assignment has no
  effect: ``reduction`` stays ``'mean'`` and the loss is the batch *mean*. That is what SentEval
  actually trains under modern torch, and what is trained here (not a sum).
- Every classifier is built with ``np.random.seed(seed)`` and ``torch.manual_seed(seed)``; its
  data order then comes from that fresh numpy stream: one ``permutation(len(train))`` per pass
  over the training data (and, for a fit with ``validation_split``, a first permutation whose
  leading ``int(0.05 * n)`` rows become the dev set and the rest, in that order, the train set).
  Here each fit has its own ``np.random.RandomState(seed)``, which draws the same numbers without
  touching the global state.
- A fit is a sequence of rounds of ``epoch_size`` (4) passes while the pass counter is at most
  ``max_epoch`` (200), so at most 51 rounds; after each round the dev accuracy is measured. A
  strictly better accuracy keeps a copy of the model; otherwise, once ``tenacity`` (5)
  non-improving rounds have been counted (the count is never reset), training stops. The kept
  model is the fit's result and its dev accuracy the fit's score.
- Protocols (SentEval's ``tools/validation.py``): inner k-fold (MR, CR, SUBJ, MPQA; outer and inner
  ``StratifiedKFold(shuffle=True, random_state=1111)``, 1111 fixed whatever the seed; the final
  model per outer fold is fit with ``validation_split=0.05``), split (SST-2: the dev set picks the
  L2 and early-stops; SentEval's refit with the chosen L2 repeats the identical seeded computation,
  so the grid's model is used), and k-fold then test (TREC, MRPC; ``random_state=seed``; final fit
  on all of train with ``validation_split=0.05``). Scores are rounded as SentEval rounds them:
  a mean of accuracies with numpy's rounding, a single accuracy with Python's, both to 2 decimals
  of the percentage; the first best L2 wins ties.

Speed: all fits of one protocol stage train in lockstep as one batch of ``(fit, l2)`` models (the
L2 values of a fit share its data, initialisation and batch order, so they differ only in the
update), with the cross-entropy gradient and the Adam update written out (the same formulas as
``torch.optim.Adam``'s single-tensor path), no autograd and no per-model Python loop. A fit whose
models have all stopped leaves the batch. Only float rounding order differs from fitting each model
alone with ``nn.Linear``/``CrossEntropyLoss``/``torch.optim.Adam`` (tests/eval/test_senteval_probe.py
checks the two agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

L2_GRID = tuple(10**t for t in range(-5, -1))  # 1e-05 .. 0.01, SentEval's PyTorch grid
INNER_KFOLD_FOLD_SEED = 1111  # SentEval's inner-k-fold protocol fixes its fold seed, whatever the seed setting
VALIDATION_SPLIT = 0.05  # final fits of the inner-k-fold and k-fold protocols


class Progress(Protocol):
    """What the fits report to: a tqdm bar fits (``update(n)`` as models finish)."""

    def update(self, n: float | None = 1) -> bool | None: ...


@dataclass(frozen=True)
class ProbeConfig:
    """SentEval's classifier settings (README values; ``max_epoch`` is SentEval's default)."""

    batch_size: int = 64
    tenacity: int = 5
    epoch_size: int = 4
    max_epoch: int = 200
    seed: int = 1111
    lr: float = 1e-3  # torch.optim.Adam's defaults, which SentEval's "adam" leaves as they are
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if min(self.batch_size, self.epoch_size) < 1 or self.tenacity < 0 or self.max_epoch < 0:
            raise ValueError(f"invalid probe settings {self}")


@dataclass(frozen=True)
class Fit:
    """One classifier fit per value of ``l2regs``, all on the same data and batch order.

    Args:
        train: rows of the feature matrix to train on, in this order.
        dev: rows that early-stop and score the fit (SentEval's ``validation_data``); ``None``
            splits ``VALIDATION_SPLIT`` of ``train`` off as dev (SentEval's ``validation_split``).
        l2regs: Adam weight decay of each model.
    """

    train: np.ndarray
    dev: np.ndarray | None
    l2regs: tuple[float, ...]


@dataclass
class FitResult:
    """Per L2 value: the best dev accuracy (a fraction), its weights ``(dim + 1, classes)`` (bias
    last), and the passes over the training data made before stopping."""

    dev_accuracy: list[float] = field(default_factory=list)
    weights: list[torch.Tensor] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)


class EarlyStopping:
    """SentEval's stopping rule for a batch of models, on dev counts of correct predictions.

    A count above the model's best so far is an improvement (keep the model). Any other round,
    once ``tenacity`` non-improving rounds have been counted before it, stops the model; the count
    of non-improving rounds is cumulative, never reset by an improvement.
    """

    def __init__(self, shape: tuple[int, ...], tenacity: int) -> None:
        self.tenacity = tenacity
        self.best = np.full(shape, -1, dtype=np.int64)
        self.misses = np.zeros(shape, dtype=np.int64)
        self.stopped = np.zeros(shape, dtype=bool)

    def update(self, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record one round; return (improved, stopped now) masks. Stopped models are frozen."""
        live = ~self.stopped
        improved = live & (correct > self.best)
        missed = live & ~improved
        stopping = missed & (self.misses >= self.tenacity)
        self.best[improved] = correct[improved]
        self.misses[missed] += 1
        self.stopped |= stopping
        return improved, stopping

    def select(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (a boolean mask over the first axis)."""
        self.best, self.misses, self.stopped = self.best[keep], self.misses[keep], self.stopped[keep]


def initial_weights(dim: int, n_classes: int, seed: int) -> torch.Tensor:
    """``(dim + 1, n_classes)``: ``nn.Linear(dim, n_classes)`` built right after ``torch.manual_seed(seed)``,
    as weight transposed with the bias as last row. The global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(dim, n_classes)
    return torch.cat([layer.weight.detach().T, layer.bias.detach()[None]], dim=0).contiguous()


def with_bias_column(x: np.ndarray) -> torch.Tensor:
    """float32 ``[x, 1]``: the bias is the last weight row."""
    x32 = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(np.hstack([x32, np.ones((len(x32), 1), dtype=np.float32)]))


def predict(x: np.ndarray | torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """Class of each row of ``x`` (features without the bias column) under ``weights``."""
    xt = with_bias_column(x) if isinstance(x, np.ndarray) else x
    return (xt @ weights).argmax(dim=1).numpy()


def _padded(rows: Sequence[np.ndarray], fill: int) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def fit_probes(
    x: np.ndarray,
    y: np.ndarray,
    fits: Sequence[Fit],
    n_classes: int,
    config: ProbeConfig,
    progress: Progress | None = None,
) -> list[FitResult]:
    """Train every ``(fit, l2)`` model of ``fits`` as SentEval's ``MLP(nhid=0).fit`` would; see the module doc.

    Args:
        x: ``(N, dim)`` features; ``fits`` index its rows.
        y: ``(N,)`` labels in ``0 .. n_classes - 1``.
        fits: the fits; all have the same number of L2 values.
        n_classes: output size of the linear layer.
        config: classifier settings.
        progress: told of each model as it finishes.
    """
    if not fits:
        return []
    n_regs = len(fits[0].l2regs)
    if any(len(f.l2regs) != n_regs for f in fits) or n_regs == 0:
        raise ValueError("every fit needs the same, non-zero number of L2 values")
    batch, c = config.batch_size, n_classes
    xt = with_bias_column(x)  # (N, D1)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(y), dtype=torch.long), c).float()
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)

    rngs, trains, devs = [], [], []
    for fit in fits:
        rng = np.random.RandomState(config.seed)
        train = np.asarray(fit.train, dtype=np.int64)
        if fit.dev is None:
            order = rng.permutation(len(train))
            n_dev = int(VALIDATION_SPLIT * len(train))
            dev, train = train[order[:n_dev]], train[order[n_dev:]]
        else:
            dev = np.asarray(fit.dev, dtype=np.int64)
        if len(train) == 0 or len(dev) == 0:
            raise ValueError("a fit needs non-empty train and dev rows")
        rngs.append(rng)
        trains.append(train)
        devs.append(dev)

    n_fits, width = len(fits), n_regs * c
    n_train = np.array([len(t) for t in trains])
    n_dev = np.array([len(d) for d in devs])
    dev_rows = torch.from_numpy(_padded(devs, 0))
    x_dev = xt[dev_rows]  # (F, M, D1)
    y_dev = labels[dev_rows].masked_fill(torch.from_numpy(_padded(devs, -1)) < 0, -1)  # padding never matches
    init = initial_weights(x.shape[1], c, config.seed)
    theta = init.repeat(n_fits, 1, n_regs)  # (F, D1, R * C); column r * C + k: class k of L2 value r
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    decay = torch.tensor([f.l2regs for f in fits], dtype=torch.float32).repeat_interleave(c, dim=1)[:, None, :]
    best_theta = theta.clone()
    steps = np.zeros(n_fits, dtype=np.int64)
    stopping_rule = EarlyStopping((n_fits, n_regs), config.tenacity)
    passes_at_stop = np.zeros((n_fits, n_regs), dtype=np.int64)
    active = np.arange(n_fits)  # fits still training, in the order of the state tensors' first axis
    results = [FitResult() for _ in fits]

    def finish(done: np.ndarray, passes: int) -> None:
        for position in np.flatnonzero(done):
            index = active[position]
            counts = stopping_rule.best[position]
            for r in range(n_regs):
                results[index].dev_accuracy.append(int(counts[r]) / int(n_dev[index]))
                results[index].weights.append(best_theta[position, :, r * c : (r + 1) * c].clone())
                stopped = stopping_rule.stopped[position, r]
                results[index].passes.append(int(passes_at_stop[index, r]) if stopped else passes)

    n_passes = 0
    while n_passes <= config.max_epoch and active.size:
        for _ in range(config.epoch_size):
            # One pass: each fit's own permutation, cut into batches of `batch` (the last one shorter).
            n_steps = int(-(-n_train[active].max() // batch))
            rows = np.zeros((active.size, n_steps * batch), dtype=np.int64)
            weight = np.zeros((active.size, n_steps * batch), dtype=np.float32)
            for position, index in enumerate(active):
                n = n_train[index]
                rows[position, :n] = trains[index][rngs[index].permutation(n)]
                starts = np.arange(n) // batch * batch
                # Mean over the batch's rows: SentEval's `size_average = False` has no effect in modern torch.
                weight[position, :n] = 1.0 / np.minimum(batch, n - starts)
            rows_t = torch.from_numpy(rows)
            weight_t = torch.from_numpy(weight)
            for step in range(n_steps):
                live = step * batch < n_train[active]
                flat = rows_t[:, step * batch : (step + 1) * batch].reshape(-1)
                xb = xt.index_select(0, flat).view(active.size, batch, -1)
                target = onehot.index_select(0, flat).view(active.size, batch, 1, c)
                logits = torch.bmm(xb, theta).view(active.size, batch, n_regs, c)
                error = torch.softmax(logits, dim=-1).sub_(target)
                error.mul_(weight_t[:, step * batch : (step + 1) * batch].view(active.size, batch, 1, 1))
                grad = torch.bmm(xb.transpose(1, 2), error.view(active.size, batch, width))
                grad.addcmul_(theta, decay)  # Adam's weight_decay: L2 gradient added to the loss gradient
                steps[active[live]] += 1
                counts = steps[active]
                common = int(counts[0]) if (counts == counts[0]).all() else None
                if live.all():
                    _adam_step(theta, m, v, grad, common, counts, config)
                else:  # some fits' passes are shorter: leave them untouched this step
                    frozen = torch.from_numpy(~live)[:, None, None]
                    before = theta.clone(), m.clone(), v.clone()
                    _adam_step(theta, m, v, grad, common, counts, config)
                    for state, previous in zip((theta, m, v), before, strict=True):
                        state.copy_(torch.where(frozen, previous, state))
        n_passes += config.epoch_size

        predicted = torch.bmm(x_dev, theta).view(active.size, x_dev.shape[1], n_regs, c).argmax(dim=-1)
        correct = (predicted == y_dev[:, :, None]).sum(dim=1).numpy()
        improved, stopping = stopping_rule.update(correct)
        passes_at_stop[active] = np.where(stopping, n_passes, passes_at_stop[active])
        keep_mask = torch.from_numpy(np.repeat(improved, c, axis=1))[:, None, :]
        best_theta = torch.where(keep_mask, theta, best_theta)
        if progress is not None and stopping.any():
            progress.update(int(stopping.sum()))
        done = stopping_rule.stopped.all(axis=1)
        if done.any():
            finish(done, n_passes)
            keep = ~done
            keep_t = torch.from_numpy(keep)
            theta, m, v, best_theta = theta[keep_t], m[keep_t], v[keep_t], best_theta[keep_t]
            decay, x_dev, y_dev = decay[keep_t], x_dev[keep_t], y_dev[keep_t]
            stopping_rule.select(keep)
            active = active[keep]
    if active.size:  # max_epoch reached
        if progress is not None:
            progress.update(int((~stopping_rule.stopped).sum()))
        finish(np.ones(active.size, dtype=bool), n_passes)
    return results


def _adam_step(
    theta: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    grad: torch.Tensor,
    step: int | None,
    steps: np.ndarray,
    config: ProbeConfig,
) -> None:
    """``torch.optim.Adam`` (single-tensor path, amsgrad off) on the batch of models, in place.

    ``step`` is the common step count, or ``None`` when the fits' counts (``steps``) differ.
    """
    m.lerp_(grad, 1 - config.beta1)
    v.mul_(config.beta2).addcmul_(grad, grad, value=1 - config.beta2)
    if step is not None:
        step_size = config.lr / (1 - config.beta1**step)
        correction2_sqrt = (1 - config.beta2**step) ** 0.5
        denominator = v.sqrt().div_(correction2_sqrt).add_(config.eps)
        theta.addcdiv_(m, denominator, value=-step_size)
        return
    counts = steps.astype(np.float64)
    step_size = torch.from_numpy(config.lr / (1 - config.beta1**counts)).float()[:, None, None]
    correction2_sqrt = torch.from_numpy((1 - config.beta2**counts) ** 0.5).float()[:, None, None]
    denominator = v.sqrt().div_(correction2_sqrt).add_(config.eps)
    theta.sub_(m.div(denominator).mul_(step_size))


# ----------------------------------------------------------------------------------- protocols
def _mean_rounded(fractions: Sequence[float]) -> float:
    """``round(100 * np.mean(...), 2)`` with numpy's rounding, as SentEval rounds a mean."""
    return float(np.round(100 * np.mean(fractions), 2))


def _rounded(fraction: float) -> float:
    """``round(100 * accuracy, 2)`` with Python's rounding, as SentEval rounds one accuracy."""
    return round(100 * float(fraction), 2)


def choose(scores: Sequence[float]) -> int:
    """Index of the first best score (``np.argmax``)."""
    return int(np.argmax(scores))


def accuracy(x: np.ndarray, y: np.ndarray, weights: torch.Tensor) -> float:
    """Fraction of rows of ``x`` whose predicted class is ``y``."""
    return int((predict(x, weights) == np.asarray(y)).sum()) / len(y)


def inner_kfold(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    kfold: int,
    config: ProbeConfig,
    l2_grid: Sequence[float] = L2_GRID,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """MR/CR/SUBJ/MPQA: outer k-fold test accuracy, the L2 of each outer fold picked by an inner k-fold."""
    from sklearn.model_selection import StratifiedKFold

    grid = tuple(l2_grid)
    splitter = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=INNER_KFOLD_FOLD_SEED)
    outer = list(splitter.split(x, y))
    inner_fits = []
    for train, _ in outer:
        for inner_train, inner_dev in splitter.split(x[train], y[train]):
            inner_fits.append(Fit(train[inner_train], train[inner_dev], grid))
    inner = fit_probes(x, y, inner_fits, n_classes, config, progress)
    dev, chosen = [], []
    for fold in range(len(outer)):
        results = inner[fold * kfold : (fold + 1) * kfold]
        scores = [_mean_rounded([r.dev_accuracy[i] for r in results]) for i in range(len(grid))]
        best = choose(scores)
        dev.append(scores[best])
        chosen.append(grid[best])
    finals = fit_probes(
        x,
        y,
        [Fit(train, None, (reg,)) for (train, _), reg in zip(outer, chosen, strict=True)],
        n_classes,
        config,
        progress,
    )
    test = [
        _rounded(accuracy(x[held_out], y[held_out], final.weights[0]))
        for (_, held_out), final in zip(outer, finals, strict=True)
    ]
    return {
        "accuracy": float(np.round(np.mean(test), 2)),
        "dev_accuracy": float(np.round(np.mean(dev), 2)),
        "l2reg": chosen,
        "fold_accuracy": test,
    }


def split(
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    config: ProbeConfig,
    l2_grid: Sequence[float] = L2_GRID,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """SST-2: the dev set early-stops every fit and picks the L2; test accuracy of that model."""
    (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = data["train"], data["dev"], data["test"]
    grid = tuple(l2_grid)
    x = np.vstack([x_train, x_dev])
    y = np.concatenate([y_train, y_dev])
    rows = np.arange(len(x))
    (result,) = fit_probes(x, y, [Fit(rows[: len(x_train)], rows[len(x_train) :], grid)], n_classes, config, progress)
    scores = [_rounded(a) for a in result.dev_accuracy]
    best = choose(scores)
    # SentEval refits with the chosen L2 on the same data and seed: the same computation, the same model.
    return {
        "accuracy": _rounded(accuracy(x_test, y_test, result.weights[best])),
        "dev_accuracy": scores[best],
        "l2reg": grid[best],
    }


def kfold_then_test(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    n_classes: int,
    kfold: int,
    config: ProbeConfig,
    l2_grid: Sequence[float] = L2_GRID,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """TREC/MRPC: L2 picked by k-fold on train; a model on all of train (5% split off to early-stop) on test."""
    from sklearn.model_selection import StratifiedKFold

    grid = tuple(l2_grid)
    folds = StratifiedKFold(n_splits=kfold, shuffle=True, random_state=config.seed).split(x_train, y_train)
    results = fit_probes(x_train, y_train, [Fit(t, d, grid) for t, d in folds], n_classes, config, progress)
    scores = [_mean_rounded([r.dev_accuracy[i] for r in results]) for i in range(len(grid))]
    best = choose(scores)
    (final,) = fit_probes(
        x_train, y_train, [Fit(np.arange(len(x_train)), None, (grid[best],))], n_classes, config, progress
    )
    predicted = predict(x_test, final.weights[0])
    return {
        "accuracy": _rounded(int((predicted == np.asarray(y_test)).sum()) / len(y_test)),
        "dev_accuracy": scores[best],
        "l2reg": grid[best],
        "predicted": predicted,
    }

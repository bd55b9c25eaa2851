"""Symmetric InfoNCE against a value worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import Matryoshka, symmetric_info_nce


def test_loss_matches_hand_computed_value() -> None:
    # Two pairs in 2-D. x0=(1,0), x1=(0,1); y0=(0.6,0.8), y1=(0.8,-0.6); scale 10.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    # cos(x_i, y_j): [[0.6, 0.8], [0.8, -0.6]] -> logits x10: [[6, 8], [8, -6]].
    # x->y rows: row0 label0: -log(e^6/(e^6+e^8)); row1 label1: -log(e^-6/(e^8+e^-6)).
    # y->x is the transpose: [[6, 8], [8, -6]] (symmetric here), same two terms.
    row0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(8)))
    row1 = -math.log(math.exp(-6) / (math.exp(8) + math.exp(-6)))
    expected = (row0 + row1) / 2
    out = symmetric_info_nce(x, y, torch.tensor(10.0))
    assert out["contrastive_loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["accuracy"].item() == 0.0  # both rows prefer the wrong item


def test_loss_is_symmetric_average_of_both_directions() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    y = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    scale = torch.tensor(20.0)
    labels = torch.arange(5)
    forward = torch.nn.functional.cross_entropy(scale * x @ y.T, labels)
    backward = torch.nn.functional.cross_entropy(scale * y @ x.T, labels)
    out = symmetric_info_nce(x, y, scale)
    assert out["contrastive_loss"].item() == pytest.approx(((forward + backward) / 2).item(), rel=1e-6)


def test_perfect_pairs_reach_full_accuracy_and_low_loss() -> None:
    x = torch.eye(4)
    out = symmetric_info_nce(x, x.clone(), torch.tensor(50.0))
    assert out["accuracy"].item() == 1.0
    assert out["contrastive_loss"].item() < 1e-10 + 4 * math.exp(-50)


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def test_matryoshka_objective_is_the_weighted_sum_of_renormalised_prefix_losses() -> None:
    x, y, scale = _unit(6, 16, 1), _unit(6, 16, 2), torch.tensor(20.0)
    spec = Matryoshka.from_settings([4, 8, 16], [0.5, 1.0, 2.0], embedding_dim=16)
    out = symmetric_info_nce(x, y, scale, matryoshka=spec)
    expected = 0.0
    for dim, weight in ((4, 0.5), (8, 1.0), (16, 2.0)):
        prefix = symmetric_info_nce(
            torch.nn.functional.normalize(x[:, :dim], dim=1), torch.nn.functional.normalize(y[:, :dim], dim=1), scale
        )["contrastive_loss"]
        assert out[f"loss@{dim}"].item() == pytest.approx(prefix.item(), rel=1e-6)
        expected += weight * prefix.item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["contrastive_loss"].item() == pytest.approx(symmetric_info_nce(x, y, scale)["loss"].item(), rel=1e-6)


def test_matryoshka_on_the_full_size_alone_is_the_plain_loss() -> None:
    x, y = _unit(5, 8, 3).requires_grad_(), _unit(5, 8, 4)
    spec = Matryoshka.from_settings([8], None, embedding_dim=8)
    plain = symmetric_info_nce(x, y, torch.tensor(10.0))["loss"]
    nested = symmetric_info_nce(x, y, torch.tensor(10.0), matryoshka=spec)["loss"]
    assert nested.item() == pytest.approx(plain.item(), rel=1e-7)
    (grad_plain,) = torch.autograd.grad(plain, x)
    (grad_nested,) = torch.autograd.grad(nested, x)
    torch.testing.assert_close(grad_nested, grad_plain)


@pytest.mark.parametrize(
    ("dims", "weights", "message"),
    [([4, 32], None, "outside"), ([4, 8], [1.0], "2 dims"), ([4], [0.0], "> 0"), (None, [1.0], "is null")],
)
def test_bad_matryoshka_settings_are_named(dims, weights, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Matryoshka.from_settings(dims, weights, embedding_dim=16)

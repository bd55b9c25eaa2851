"""Symmetric InfoNCE against a value worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from train.losses import symmetric_info_nce


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

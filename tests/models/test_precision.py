"""bf16 weight casting for inference: the same vectors as autocast on fp32 weights, bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from models import DecoderEmbedder
from models.precision import cast_autocast_weights, inference_autocast
from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["a short one", "a somewhat longer sentence about embeddings and decoders", "def f(x):\n    return x"]


def encode(model: DecoderEmbedder, side: str, **kwargs) -> torch.Tensor:
    with torch.inference_mode(), inference_autocast("bf16"):
        return model.encode(TEXTS, side, max_length=32, **kwargs)


@pytest.mark.parametrize(
    "batch_size", [32, 1]
)  # one autocast region over several calls (autocast's cache), and one per row
def test_cast_weights_give_autocasts_vectors_exactly(batch_size):
    reference = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).eval()
    cast = copy.deepcopy(reference)
    count = cast_autocast_weights(cast, "bf16")
    linears = [m for m in cast.modules() if isinstance(m, torch.nn.Linear)]
    assert count == sum(len(list(m.parameters(recurse=False))) for m in linears) > 0
    assert all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert all(p.dtype == torch.float32 for n, p in cast.named_parameters() if "norm" in n or "embed" in n)
    for side in ("query", "doc"):
        assert torch.equal(encode(cast, side, batch_size=batch_size), encode(reference, side, batch_size=batch_size))


def test_a_linear_weight_tied_to_the_embedding_stays_float32():
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=True)
    model.head.weight = model.embed.weight
    assert cast_autocast_weights(model, "bf16") == 1  # the bias only
    assert model.embed.weight.dtype == torch.float32 and model.head.bias.dtype == torch.bfloat16


def test_fp32_casts_nothing_and_unknown_precisions_are_refused():
    model = torch.nn.Linear(4, 4)
    assert cast_autocast_weights(model, "fp32") == 0 and model.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        cast_autocast_weights(model, "fp16")

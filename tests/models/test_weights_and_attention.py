"""``model.dtype`` and ``model.attn_implementation``: the weights load in the asked dtype, every
attention kernel gives the same embeddings, and a kernel whose package is missing is refused by name."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from models import DecoderEmbedder
from models.backbone import ATTENTION_IMPLEMENTATIONS, flex_attention_miscomputes_here
from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["short", "a somewhat longer text, to make the rows differ in length", "def f(x):\n    return x"]


def build(**options) -> DecoderEmbedder:
    return DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, **options)


def embed(model: DecoderEmbedder, side: str = "query") -> torch.Tensor:
    batch = model.tokenize(TEXTS, side, max_length=24)
    with torch.no_grad():
        return model(batch["input_ids"], batch["attention_mask"], side)


@pytest.mark.parametrize("implementation", ["eager", "flex_attention"])
def test_attention_implementations_embed_alike(implementation: str) -> None:
    if implementation == "flex_attention" and flex_attention_miscomputes_here():
        with pytest.raises(ValueError, match="flex_attention: on this CPU"):
            build(attn_implementation=implementation)
        return
    reference = embed(build())
    model = build(attn_implementation=implementation)
    assert model.backbone.config._attn_implementation == implementation
    torch.testing.assert_close(embed(model), reference, atol=1e-5, rtol=0)


def test_bfloat16_weights_stay_bfloat16_and_embed_close_to_float32(tmp_path) -> None:
    reference = embed(build())
    model = build(dtype="bfloat16")
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert model.log_scale.dtype == torch.float32  # the temperature stays float32
    vectors = embed(model)
    assert vectors.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(vectors, reference).min() > 0.99
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = DecoderEmbedder.from_pretrained(tmp_path / "ckpt")
    assert {p.dtype for p in reloaded.backbone.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(embed(reloaded), vectors, atol=0, rtol=0)


def test_unknown_dtype_and_attention_are_named() -> None:
    with pytest.raises(ValueError, match=r"model.dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        build(dtype="fp8")
    with pytest.raises(ValueError, match="model.attn_implementation must be one of"):
        build(attn_implementation="paged")


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_without_its_package_is_refused(implementation: str) -> None:
    module = ATTENTION_IMPLEMENTATIONS[implementation][0]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(ValueError, match=rf"attn_implementation={implementation} needs .*{module}.*not installed"):
        build(attn_implementation=implementation)

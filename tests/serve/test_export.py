"""Export: SentenceTransformer(folder).encode equals our model, per side; the export folder also serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["short", "a somewhat longer sentence about code search", "def f(x):\n    return x + 1", "word " * 100]
MAX_SEQ = 48


def trained_lora_model(**options):
    """A tiny LoRA tower whose adapters and delimiter rows are non-zero, as after training."""
    import torch

    from models import DecoderEmbedder

    model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, lora={"r": 4}, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


@pytest.mark.parametrize(
    "options",
    [{}, {"projection_dim": 16, "shared_weights": False, "matryoshka_dims": [4, 16]}, {"lora": True},
     {"lora": True, "shared_weights": False}],
    ids=["shared", "projection-separate-matryoshka", "lora", "lora-separate"],
)  # fmt: skip
def test_sentence_transformers_folder_matches_model(tmp_path, options):
    """LoRA: the export merges the adapters, and the folder reproduces the (unmerged) adapter model."""
    from sentence_transformers import SentenceTransformer

    from models import DecoderEmbedder
    from serve.export import main

    options = dict(options)
    if options.pop("lora", False):
        model = trained_lora_model(**options)
    else:
        model = DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0, **options)
    # instruct decoders ship a chat template, which sentence-transformers would wrap every text in
    model.tokenizer.chat_template = "{% for m in messages %}<|system|>{{ m['content'] }}{% endfor %}"
    model.save_pretrained(tmp_path / "checkpoint")
    main([str(tmp_path / "checkpoint"), str(tmp_path / "out"), "--max-seq-length", str(MAX_SEQ)])
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["sides"] == {side: f"sentence-transformers/{side}" for side in TWO_SIDES}
    assert info["matryoshka_dims"] == options.get("matryoshka_dims")
    for side in TWO_SIDES:
        st = SentenceTransformer(str(tmp_path / "out" / info["sides"][side]), device="cpu")
        got = st.encode(TEXTS, batch_size=3, convert_to_numpy=True)
        want = model.encode(TEXTS, side, batch_size=3, max_length=MAX_SEQ).numpy()
        assert got.shape == want.shape == (len(TEXTS), model.embedding_dim)
        assert np.abs(got - want).max() < 1e-5
    reloaded = DecoderEmbedder.from_pretrained(tmp_path / "out")  # the export folder is also a checkpoint
    atol = 1e-5 if model.lora is not None else 1e-6  # merged weights: the adapter's product rounded into W
    np.testing.assert_allclose(reloaded.encode(TEXTS, "doc").numpy(), model.encode(TEXTS, "doc").numpy(), atol=atol)


def test_server_serves_an_adapter_checkpoint_directly(tmp_path):
    from serve.engine import EmbeddingEngine

    model = trained_lora_model()
    model.save_pretrained(tmp_path / "checkpoint")
    engine = EmbeddingEngine.from_folder(tmp_path / "checkpoint", name="tiny", max_length=MAX_SEQ)
    rows = [engine.row("query", body) for body in engine.tokenize(TEXTS)]
    got = np.stack([vector.numpy() for vector in engine.run(rows)])
    want = model.encode(TEXTS, "query", max_length=MAX_SEQ).numpy()
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.integration
def test_smollm2_export_matches_model(tmp_path):
    """The offline SmolLM2-135M-Instruct decoder (chat template, GPT-2 style tokenizer); ~1 min on 2 cores."""
    from sentence_transformers import SentenceTransformer

    from models import DecoderEmbedder
    from serve.export import export

    sides = {
        "query": {"open_token": "<|query|>", "close_token": "<|/query|>"},
        "doc": {"open_token": "<|doc|>", "close_token": "<|/doc|>"},
    }
    model = DecoderEmbedder.build("smollm2-135m", sides, seed=0)
    model.save_pretrained(tmp_path / "checkpoint")
    info = export(tmp_path / "checkpoint", tmp_path / "out", max_seq_length=32)
    for side in sides:
        st = SentenceTransformer(str(tmp_path / "out" / info["sides"][side]), device="cpu")
        got = st.encode(TEXTS, convert_to_numpy=True)
        assert np.abs(got - model.encode(TEXTS, side, max_length=32).numpy()).max() < 1e-5


def test_verify_compares_the_export_with_the_unmerged_adapter_model(tmp_path):
    from serve.export import main

    trained_lora_model().save_pretrained(tmp_path / "checkpoint")
    main([str(tmp_path / "checkpoint"), str(tmp_path / "out"), "--max-seq-length", "40", "--verify",
          "--no-side-stack"])  # fmt: skip
    report = (tmp_path / "out" / "verify" / "parity.md").read_text()
    assert "source LoRA checkpoint, adapters unmerged (r=4) | query |" in report and "**NO**" not in report

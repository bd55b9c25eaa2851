"""Export: SentenceTransformer(folder).encode equals our model, per side; the export folder also serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import TINY_LLAMA, TWO_SIDES

TEXTS = ["short", "a somewhat longer sentence about code search", "def f(x):\n    return x + 1", "word " * 100]
MAX_SEQ = 48


@pytest.mark.parametrize(
    "options",
    [{}, {"projection_dim": 16, "shared_weights": False, "matryoshka_dims": [4, 16]}],
    ids=["shared", "projection-separate-matryoshka"],
)
def test_sentence_transformers_folder_matches_model(tmp_path, options):
    from sentence_transformers import SentenceTransformer

    from models import DecoderEmbedder
    from serve.export import main

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
    np.testing.assert_allclose(reloaded.encode(TEXTS, "doc").numpy(), model.encode(TEXTS, "doc").numpy(), atol=1e-6)


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

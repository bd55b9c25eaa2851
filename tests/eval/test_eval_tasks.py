"""A benchmark's task text reaches a checkpoint trained with a {task} instruction, and nothing else changes."""

from __future__ import annotations

import numpy as np
import torch

from eval.cache import Encoder
from eval.sources import CheckpointSource
from tests.conftest import TINY_LLAMA

SIDES = {"text": {"open_token": "<|t|>", "close_token": "<|/t|>"}}
TEXTS = ["a cat sat on the mat", "stocks rose sharply"]


def checkpoint(tmp_path, **options):
    from models import DecoderEmbedder

    model = DecoderEmbedder.build(None, SIDES, random_config=TINY_LLAMA, seed=0, **options)
    model.save_pretrained(tmp_path)
    return model, CheckpointSource(str(tmp_path), show_progress=False, max_length=64)


def test_a_benchmark_task_fills_the_checkpoints_instruction(tmp_path) -> None:
    model, source = checkpoint(tmp_path, instructions={"text": "Instruct: {task}\nQuery: {text}"}, task="trained")
    encoder = Encoder(source, "tiny", cache_dir=tmp_path / "cache")
    assert source.takes_task
    with torch.no_grad():
        wanted = model.encode(TEXTS, "text", max_length=64, task="from the benchmark").numpy()
        own = model.encode(TEXTS, "text", max_length=64).numpy()
    np.testing.assert_allclose(
        encoder.for_task("from the benchmark").encode(TEXTS, "symmetric", "x"), wanted, atol=1e-6
    )
    np.testing.assert_allclose(encoder.encode(TEXTS, "symmetric", "x"), own, atol=1e-6)  # cached apart per task
    assert not np.allclose(wanted, own, atol=1e-4)


def test_without_an_instruction_the_task_changes_nothing_not_even_the_cache_key(tmp_path) -> None:
    _, source = checkpoint(tmp_path)
    encoder = Encoder(source, "tiny", cache_dir=tmp_path / "cache")
    assert not source.takes_task and encoder.for_task("anything") is encoder

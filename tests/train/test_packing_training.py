"""``trainer.packing=true`` trains exactly as padded batches do: plain, GradCache, accumulation,
hard negatives, Matryoshka, and 2 processes; and which precision ``trainer.mixed_precision=auto`` picks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose_train_config
from tests.train.test_negatives import overrides, write_with_negatives
from tests.train.test_scale import assert_same_weights, final_weights, losses, run_one_and_two_processes
from train.contrastive import train
from train.settings import TrainerSettings


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("trainer.gradcache_chunk=5", "trainer.grad_accum_steps=2", "trainer.batch_size=8"),
        ("trainer.num_negatives=3", "trainer.matryoshka_dims=[8,32]", "trainer.pack_length=96"),
    ],
    ids=["plain", "gradcache-accumulate", "negatives-matryoshka"],
)
def test_packed_training_equals_padded_training(tmp_path, extra: tuple[str, ...]) -> None:
    data = write_with_negatives(tmp_path / "with.jsonl", 16)
    runs = {}
    for name, packing in (("padded", "false"), ("packed", "true")):
        settings = ("trainer.steps=2", "trainer.batch_size=16", "trainer.temperature_lr=1e-2", *extra,
                    f"trainer.packing={packing}")  # fmt: skip
        train(compose_train_config(overrides(data, *settings), tmp_path), tmp_path / name)
        runs[name] = tmp_path / name
    assert losses(runs["packed"]) == pytest.approx(losses(runs["padded"]), abs=1e-5)
    assert_same_weights(final_weights(runs["packed"], 2), final_weights(runs["padded"], 2), atol=1e-5)


@pytest.mark.multiprocess
def test_two_packed_processes_equal_one_padded_process(tmp_path) -> None:
    data = write_with_negatives(tmp_path / "with.jsonl", 24)
    common = [*overrides(data, "trainer.steps=3", "trainer.num_negatives=3")]
    run_one_and_two_processes(tmp_path, common, "3", two_only=("trainer.packing=true",))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "two", 3), final_weights(tmp_path / "one", 3), atol=1e-5)


def test_pack_length_shorter_than_a_row_is_refused() -> None:
    base = {"steps": 1, "batch_size": 2, "max_length": 32, "lr": 1e-4, "packing": True}
    assert TrainerSettings.from_config(base).pack_tokens == 32
    assert TrainerSettings.from_config({**base, "pack_length": 128}).pack_tokens == 128
    assert TrainerSettings.from_config({**base, "packing": False}).pack_tokens is None
    with pytest.raises(ValueError, match="pack_length must be >= trainer.max_length"):
        TrainerSettings.from_config({**base, "pack_length": 16})


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch, native: bool) -> None:
    import train.settings

    monkeypatch.setattr(train.settings, "native_bf16", lambda: native)
    base = {"steps": 1, "batch_size": 2, "max_length": 32, "lr": 1e-4}
    assert TrainerSettings.from_config({**base, "mixed_precision": "auto"}).resolved_mixed_precision() == (
        "bf16" if native else "no"
    )
    for explicit in ("no", "bf16"):  # explicit choices are kept whatever the hardware
        assert TrainerSettings.from_config({**base, "mixed_precision": explicit}).resolved_mixed_precision() == explicit
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainerSettings.from_config({**base, "mixed_precision": "bf32"})


def test_bfloat16_weights_train_packed_and_checkpoint_in_bfloat16(tmp_path) -> None:
    from models import DecoderEmbedder

    data = write_with_negatives(tmp_path / "with.jsonl", 16)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        settings = ("trainer.steps=2", "trainer.batch_size=8", "trainer.packing=true", f"model.dtype={dtype}")
        train(compose_train_config(overrides(data, *settings), tmp_path), tmp_path / dtype)
        runs[dtype] = tmp_path / dtype
    weights = final_weights(runs["bfloat16"], 2)
    assert {w.dtype for name, w in weights.items() if name.startswith("backbone.")} == {torch.bfloat16}
    # pure bf16 training follows fp32's losses loosely (2 steps of a random model), not exactly
    assert losses(runs["bfloat16"]) == pytest.approx(losses(runs["float32"]), abs=0.05)
    checkpoint = DecoderEmbedder.from_pretrained(runs["bfloat16"] / "checkpoints" / "step-000002")
    assert checkpoint.backbone.dtype == torch.bfloat16

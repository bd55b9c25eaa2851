"""Scale: negatives across processes, GradCache and exact resume give the same training as one plain pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO_ROOT, compose_train_config
from tests.train.test_training import tiny_overrides, write_pairs
from train.contrastive import train
from train.gradcache import RandState

ENV = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def launch(args: list[str], processes: int, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--num_processes", str(processes)]  # fmt: skip
    env = dict(ENV)
    if processes > 1:
        command.append("--multi_gpu")  # with ACCELERATE_USE_CPU: MULTI_CPU over gloo
        env["ACCELERATE_USE_CPU"] = "true"
    return subprocess.run(
        [*command, "train/contrastive.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def final_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "training_state" / "model.safetensors"))


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor], atol: float) -> None:
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(
            left[name], right[name], atol=atol, rtol=0, msg=lambda detail, name=name: f"{name}: {detail}"
        )


def run_one_and_two_processes(tmp_path: Path, common: list[str], chunk: str, two_only: tuple[str, ...] = ()) -> None:
    """The same global batch of 8: one process (``tmp_path/one``), two of 4 each with ``chunk`` (``two``);
    ``two_only``: overrides for the two-process run alone (e.g. packing against the padded reference)."""
    one = launch([*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"], processes=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(
        [*common, "trainer.batch_size=4", f"trainer.gradcache_chunk={chunk}", *two_only,
         f"hydra.run.dir={tmp_path / 'two'}"],
        processes=2,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("chunk", "matryoshka", "lora"),
    [("null", "null", 0), ("3", "null", 0), ("3", "[8,16,32]", 0), ("null", "null", 4)],
    ids=["plain", "gradcache", "gradcache-matryoshka", "lora"],
)
def test_two_processes_equal_one_process_on_the_same_global_batch(
    tmp_path, chunk: str, matryoshka: str, lora: int
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 24)
    common = ["model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}",
              "trainer.steps=3", f"trainer.matryoshka_dims={matryoshka}", f"model.lora.r={lora}"]  # fmt: skip
    if lora:
        common.append("trainer.lr=1e-2")  # adapters start at B = 0: a LoRA-sized step, so every tensor moves
    run_one_and_two_processes(tmp_path, common, chunk)
    state = json.loads((tmp_path / "two" / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["processes"] == 2 and state["global_batch"] == 8
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "two", 3), final_weights(tmp_path / "one", 3), atol=1e-5)


@pytest.mark.parametrize(
    ("accumulate", "matryoshka", "lora"),
    [(1, "null", ()), (2, "null", ()), (2, "[4,8,32]", ()), (2, "null", ("model.lora.r=4", "trainer.lr=1e-2"))],
    ids=["1", "2", "2-matryoshka", "2-lora"],
)
def test_gradcache_update_equals_plain_full_batch_update(
    tmp_path, accumulate: int, matryoshka: str, lora: tuple[str, ...]
) -> None:
    runs = {}
    for name, chunk in (("plain", "null"), ("cached", "5")):
        extra = ("trainer.steps=2", f"trainer.gradcache_chunk={chunk}", f"trainer.grad_accum_steps={accumulate}",
                 f"trainer.batch_size={16 // accumulate}", "trainer.temperature_lr=1e-2",
                 f"trainer.matryoshka_dims={matryoshka}", *lora)  # fmt: skip
        (tmp_path / name).mkdir()
        cfg = compose_train_config(tiny_overrides(tmp_path / name, pairs=16, extra=extra), tmp_path / name)
        train(cfg, tmp_path / name / "run")
        runs[name] = tmp_path / name / "run"
    assert losses(runs["cached"]) == pytest.approx(losses(runs["plain"]), abs=1e-6)
    assert_same_weights(final_weights(runs["cached"], 2), final_weights(runs["plain"], 2), atol=1e-6)


def test_rand_state_replays_dropout() -> None:
    layer = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    state = RandState()
    first = layer(x)
    with state:
        replay = layer(x)
    assert torch.equal(first, replay)
    assert not torch.equal(layer(x), first)


@pytest.mark.parametrize(
    ("steps", "every", "lora"),
    [(400, 50, ()), (200, 25, ("model.lora.r=4", "model.lora.dropout=0.1", "trainer.lr=1e-2"))],
    ids=["full", "lora"],
)
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(
    tmp_path, steps: int, every: int, lora: tuple[str, ...]
) -> None:
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    common = ["model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}",
              f"trainer.steps={steps}", "trainer.batch_size=8", f"trainer.checkpoint_every={every}",
              "trainer.keep_checkpoints=0", "+model.random_config.attention_dropout=0.1", *lora]  # fmt: skip
    reference = launch([*common, f"hydra.run.dir={tmp_path / 'reference'}"], processes=1)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run = tmp_path / "killed"  # killed and resumed with DataLoader workers: they must change nothing
    workers = ["trainer.num_workers=2"]
    command = [sys.executable, "train/contrastive.py", *common, *workers, f"hydra.run.dir={run}"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "checkpoints" / f"step-{2 * every:06d}" / "trainer_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "checkpoints" / f"step-{steps:06d}").exists(), "killed too late to test anything"

    resumed = launch([*common, *workers, f"hydra.run.dir={run}", "resume=auto"], processes=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    left, right = final_weights(run, steps), final_weights(tmp_path / "reference", steps)
    assert left.keys() == right.keys()
    assert all(torch.equal(left[name], right[name]) for name in left)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, steps + 1)
    )
    if lora:  # the adapters and heads only: the base is rebuilt from its identity, not copied
        assert left and all("lora_" in k or "trainable_tokens" in k or k == "temperature.log_scale" for k in left)


def test_fresh_start_refuses_a_folder_with_checkpoints(tmp_path) -> None:
    cfg = compose_train_config(tiny_overrides(tmp_path), tmp_path)
    train(cfg, tmp_path / "run")
    with pytest.raises(FileExistsError, match="resume=auto"):
        train(cfg, tmp_path / "run")
    cfg.resume = "auto"
    assert train(cfg, tmp_path / "run")["checkpoint"].endswith("step-000003")


def test_nonfinite_loss_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    import train.build as build
    import train.loop as loop
    from models import DecoderEmbedder

    real = build.build_loss(0, 1, None)
    calls = {"n": 0}

    def nan_on_third_step(x, y, scale, x_keys=None, y_keys=None):
        calls["n"] += 1
        out = real(x, y, scale, x_keys, y_keys)
        if calls["n"] == 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(build, "build_loss", lambda rank, world_size, matryoshka: nan_on_third_step)
    cfg = compose_train_config(
        tiny_overrides(tmp_path, pairs=4, steps=5, extra=("trainer.checkpoint_every=1", "trainer.keep_checkpoints=0")),
        tmp_path,
    )
    with pytest.raises(loop.NonFiniteLossError, match="step 3.*step-000002"):
        train(cfg, tmp_path / "run")
    names = sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-000001", "step-000002"]
    DecoderEmbedder.from_pretrained(tmp_path / "run")  # the last good one loads

"""``accelerate launch train/contrastive.py`` as a user runs it: overrides, --multirun, bad options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.train.test_training import write_pairs

LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_processes",
    "1",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def launch(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*LAUNCH, "train/contrastive.py", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_args(tmp_path: Path) -> list[str]:
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    return ["model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}"]


def test_multirun_under_accelerate_launch(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    result = launch(["--multirun", *tiny_args(tmp_path), "trainer.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}"])
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "step-000002" / "embedder_config.json").is_file()
        assert (sweep / job / "metrics.jsonl").is_file()


def test_unknown_option_fails_naming_it(tmp_path) -> None:
    result = launch([*tiny_args(tmp_path), "trainer.warmup=3", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode != 0
    assert "trainer.warmup" in result.stderr

"""Launched as a user launches them: FSDP2 and DDP on CPU processes, two simulated machines, and the
guards, each proven against one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.precision import native_bf16
from tests.conftest import REPO_ROOT
from tests.train.test_negatives import write_with_negatives
from tests.train.test_scale import ENV, assert_same_weights, losses
from tests.train.test_training import write_pairs
from train.launch import LaunchError, RunFolderLock, check_process_group

ACCELERATE = REPO_ROOT / "configs" / "accelerate"
TIMEOUT = 600  # seconds per launch: ~15 s alone here; generous for a machine shared with other work


def launch(args: list[str], *launcher: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """``accelerate launch [launcher] train/contrastive.py [args]`` from the repository root."""
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "train/contrastive.py", *args]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def one_process(args: list[str]) -> subprocess.CompletedProcess:
    return launch(args, "--num_processes", "1", "--mixed_precision", "no")


def config(name: str) -> tuple[str, str]:
    return "--config_file", str(ACCELERATE / name)


def exported_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's inference folder (backbone or adapter, and the heads)."""
    weights = {}
    folders = [*checkpoint.glob("backbone*"), *checkpoint.glob("adapter*")]
    for file in sorted(f for folder in folders for f in folder.glob("*.safetensors")) + [
        checkpoint / "heads.safetensors"
    ]:
        weights.update({f"{file.parent.name}/{key}": value for key, value in load_file(str(file)).items()})
    return weights


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def common_args(tmp_path: Path, *extra: str, negatives: bool = False) -> list[str]:
    data = (
        write_with_negatives(tmp_path / "pairs.jsonl", 24) if negatives else write_pairs(tmp_path / "pairs.jsonl", 24)
    )
    return ["model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}", "trainer.steps=3",
            *extra]  # fmt: skip


MODES = {
    "full": (),
    "lora": ("model.lora.r=4", "trainer.lr=1e-2"),
    "gradcache": ("trainer.gradcache_chunk=3",),
    "negatives": ("trainer.num_negatives=3",),
    "packing": ("trainer.packing=true", "trainer.num_negatives=3"),
}


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", [m if m == "full" else pytest.param(m, marks=pytest.mark.distributed) for m in MODES])
def test_fsdp_on_two_cpu_processes_equals_one_process(tmp_path, mode: str) -> None:
    common = common_args(tmp_path, *MODES[mode], negatives="negatives" in mode or mode == "packing")
    assert_ok(one_process([*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"]))
    sharded = launch([*common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'fsdp'}"], *config("fsdp_cpu.yaml"))
    assert_ok(sharded)
    assert "2 processes, FSDP" in output(sharded)
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    one, two = (tmp_path / name / "checkpoints" / "step-000003" for name in ("one", "fsdp"))
    assert_same_weights(exported_weights(two), exported_weights(one), atol=1e-5)
    assert any((two / "training_state").glob("pytorch_model_fsdp_0/*.distcp"))  # sharded training state
    if mode == "full":  # the served export of the sharded run is the 1-process run's export
        from serve.export import export

        export(one, tmp_path / "export-one", max_seq_length=64)
        export(two, tmp_path / "export-fsdp", max_seq_length=64)
        for file in (tmp_path / "export-one").rglob("*.safetensors"):
            twin = tmp_path / "export-fsdp" / file.relative_to(tmp_path / "export-one")
            assert_same_weights(load_file(str(twin)), load_file(str(file)), atol=1e-5)


def tiny_base(folder: Path) -> Path:
    """A saved random decoder: ZeRO-3 initialises a randomly built model its own way, loaded weights alike."""
    from models.backbone import load_backbone
    from tests.conftest import TINY_LLAMA

    torch.manual_seed(0)
    backbone, tokenizer = load_backbone(None, TINY_LLAMA)
    backbone.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.distributed
@pytest.mark.multiprocess
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_equals_one_process(tmp_path, stage: int) -> None:
    pytest.importorskip("deepspeed")
    base = tiny_base(tmp_path / "base")
    common = common_args(tmp_path, "model.random_config=null", f"model.pretrained={base}")
    assert_ok(one_process([*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"]))
    zero = launch([*common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'zero'}"],
                  *config(f"zero{stage}_cpu.yaml"))  # fmt: skip
    assert_ok(zero)
    assert "2 processes, DEEPSPEED" in output(zero) and "26881 of 26881 parameters trainable" in output(zero)
    tolerance = 1e-5 if stage == 2 else 1e-4  # ZeRO-3 gathers and reduces partitions in its own order
    assert losses(tmp_path / "zero") == pytest.approx(losses(tmp_path / "one"), abs=tolerance)
    one, two = (tmp_path / name / "checkpoints" / "step-000003" for name in ("one", "zero"))
    assert_same_weights(exported_weights(two), exported_weights(one), atol=tolerance)


@pytest.mark.distributed
@pytest.mark.multiprocess
def test_fsdp_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path) -> None:
    common = [*common_args(tmp_path, "trainer.steps=40", "trainer.batch_size=4", "trainer.checkpoint_every=8",
                           "trainer.keep_checkpoints=0")]  # fmt: skip
    assert_ok(launch([*common, f"hydra.run.dir={tmp_path / 'reference'}"], *config("fsdp_cpu.yaml")))
    run = tmp_path / "killed"
    process = launch([*common, f"hydra.run.dir={run}"], *config("fsdp_cpu.yaml"), wait=False)
    deadline = time.monotonic() + TIMEOUT
    while not (run / "checkpoints" / "step-000008").is_dir() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint at step 8 in time"
        time.sleep(0.05)
    kill_everything_writing(run)  # the launcher and both workers (torchrun puts them in their own group), mid-run
    process.communicate()
    assert not (run / "checkpoints" / "step-000040").exists(), "the run ended before the kill"
    resumed = launch([*common, f"hydra.run.dir={run}", "resume=auto"], *config("fsdp_cpu.yaml"))
    assert_ok(resumed)
    assert "resumed from" in output(resumed)
    final = (path / "checkpoints" / "step-000040" for path in (run, tmp_path / "reference"))
    assert_same_weights(*(exported_weights(path) for path in final), atol=0)
    assert losses(run) == losses(tmp_path / "reference")


@pytest.mark.multiprocess
def test_the_shipped_cpu_ddp_config_forms_one_group_equal_to_one_process(tmp_path) -> None:
    common = common_args(tmp_path)
    assert_ok(one_process([*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"]))
    ddp = launch([*common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'ddp'}"], *config("ddp_cpu.yaml"))
    assert_ok(ddp)
    assert "2 processes, MULTI_CPU" in output(ddp)
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)


def kill_everything_writing(run: Path) -> None:
    """SIGKILL every process whose command line names ``run`` (a power cut, as far as the run can tell)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(run) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.multiprocess
def test_two_machines_on_localhost_equal_one_machine_with_two_processes(tmp_path) -> None:
    common = common_args(tmp_path, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'multinode'}")
    assert_ok(launch([*common[:-1], f"hydra.run.dir={tmp_path / 'one-machine'}"], *config("ddp_cpu.yaml")))
    port = str(free_port())
    machines = [
        launch(common, *config("ddp_multinode.yaml"), "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
               "--mixed_precision", "no", wait=False)
        for rank in (0, 1)
    ]  # fmt: skip
    for machine in machines:
        _, stderr = machine.communicate(timeout=TIMEOUT)
        assert machine.returncode == 0, stderr[-4000:]
    assert losses(tmp_path / "multinode") == pytest.approx(losses(tmp_path / "one-machine"), abs=1e-6)
    final = (tmp_path / name / "checkpoints" / "step-000003" for name in ("multinode", "one-machine"))
    assert_same_weights(*(exported_weights(path) for path in final), atol=1e-6)


@pytest.mark.skipif(not native_bf16(), reason="no native bf16 on this CPU")
@pytest.mark.distributed
@pytest.mark.multiprocess
def test_fsdp_trains_in_bf16_close_to_one_bf16_process(tmp_path) -> None:
    common = common_args(tmp_path, "trainer.mixed_precision=bf16")
    assert_ok(one_process([*common, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}"]))
    sharded = launch([*common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'fsdp'}"],
                     *config("fsdp_cpu.yaml"), "--mixed_precision", "bf16")  # fmt: skip
    assert_ok(sharded)
    assert "mixed precision bf16" in output(sharded)
    # FSDP casts the weights to bf16 (its MixedPrecisionPolicy) where autocast casts per op: close, not equal
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "one"), abs=3e-2)


class LoneAccelerator:
    num_processes = 1
    distributed_type = "DistributedType.NO"


def test_processes_that_each_see_one_process_are_stopped_with_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="each would train alone.*configs/accelerate/ddp_cpu.yaml"):
        check_process_group(LoneAccelerator())
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_process_group(LoneAccelerator())


def test_a_second_run_on_the_same_folder_is_stopped_before_it_writes(tmp_path) -> None:
    held = RunFolderLock(tmp_path / "run")
    other = subprocess.run(
        [sys.executable, "-c", f"from train.launch import RunFolderLock; RunFolderLock(__import__('pathlib').Path("
         f"{str(tmp_path / 'run')!r}))"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert other.returncode != 0 and "is being written by another run (pid" in other.stderr
    held.release()
    RunFolderLock(tmp_path / "run").release()  # free again once the holder is gone


def test_a_second_run_on_a_busy_folder_fails_in_one_line_before_writing(tmp_path) -> None:
    with_lock = RunFolderLock(tmp_path / "run")
    try:
        result = subprocess.run(
            [sys.executable, "train/contrastive.py", *common_args(tmp_path), f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        with_lock.release()
    assert result.returncode == 2
    assert "is being written by another run" in output(result) and "Traceback" not in output(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_accelerate_configs_parse(tmp_path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for path in sorted(ACCELERATE.glob("*.yaml")):
        parsed = load_config_from_file(str(path))
        assert parsed.num_processes >= 1, path.name
    fsdp = load_config_from_file(str(ACCELERATE / "fsdp_cpu.yaml"))
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.use_cpu
    assert json.loads(json.dumps(fsdp.to_dict()))["distributed_type"] == "FSDP"

"""A run's processes: the ``Accelerator`` (FSDP included on CPU processes) and the guards that stop a
launch before step 1 when its processes do not form the group the launcher meant, or when another
run writes the same folder.

The ``Accelerator`` is created here and nowhere else.

CPU processes: ``accelerate launch`` with a multi-process config (DDP or FSDP) and ``use_cpu: true``
starts the processes with ``WORLD_SIZE`` set but does not tell them to use the CPU, and accelerate 1.x
only forms GPU-like groups by itself, so each process used to see a lone ``DistributedType.NO`` and
train alone. :func:`make_accelerator` asks for the CPU group (``MULTI_CPU``, gloo) whenever several
processes run without CUDA, and promotes it to accelerate's FSDP path when the launcher asked for
FSDP (FSDP2 runs on gloo): the same ``prepare`` / ``save_state`` / ``get_state_dict`` code that runs
on GPUs (configs/accelerate/ddp_cpu.yaml, fsdp_cpu.yaml, docs/scaling.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class LaunchError(RuntimeError):
    """The processes of a launch do not form the group it asked for, or the run folder is taken."""


def make_accelerator(mixed_precision: str, log_with: list[str] | None, output_dir: Path) -> Any:
    """The run's ``Accelerator``. Several launched processes without CUDA form a gloo group: ``MULTI_CPU``
    (DDP), promoted to accelerate's FSDP path when the launcher asked for FSDP, or DeepSpeed's own
    group over gloo when it asked for DeepSpeed (whose CPU default, oneCCL, is not installed)."""
    from accelerate import Accelerator
    from accelerate.state import PartialState

    on_cpu = launched_processes() > 1 and not _cuda()
    deepspeed = _requested("DEEPSPEED")
    if on_cpu and deepspeed:
        PartialState(backend="gloo")  # the shared state Accelerator then builds on
    accelerator = Accelerator(
        mixed_precision=mixed_precision, log_with=log_with, project_dir=str(output_dir), cpu=on_cpu and not deepspeed
    )
    if on_cpu and _requested("FSDP"):
        _promote_to_fsdp(accelerator, mixed_precision)
    check_process_group(accelerator)
    return accelerator


def configure_engine(accelerator: Any, micro_batch: int) -> None:
    """Tell DeepSpeed the per-process micro-batch (it reads it from a prepared DataLoader, which this
    trainer does not hand over: its data yields whole steps)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when not launched for several)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_process_group(accelerator: Any) -> None:
    """Stop when the launcher started more processes than the accelerator sees (each would train alone).

    Raises:
        LaunchError: naming the launch that gives a real group on this machine.
    """
    launched = launched_processes()
    if launched > 1 and accelerator.num_processes != launched:
        raise LaunchError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but this one sees "
            f"{accelerator.num_processes} ({accelerator.distributed_type}): each would train alone on the whole "
            "batch and overwrite the others' checkpoints. On CPU use `accelerate launch --config_file "
            "configs/accelerate/ddp_cpu.yaml` (or fsdp_cpu.yaml), or `ACCELERATE_USE_CPU=true accelerate launch "
            "--multi_gpu --num_processes N`; on GPUs check that CUDA is visible to every process"
        )


class RunFolderLock:
    """An exclusive lock on a run folder, held by the run's main process until the run ends.

    A second run started on the same folder (or a second lone process of a broken launch) fails at
    once instead of interleaving checkpoints and metrics. The lock is a POSIX record lock (``lockf``)
    on ``OUTPUT/.run.lock``: it belongs to this process alone (DataLoader workers forked from it do
    not hold it, as they would an ``flock``), works on NFS, and the system drops it when the process
    dies, so a killed run resumes at once.
    """

    def __init__(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.path = output_dir / LOCK_NAME
        self._file = self.path.open("a+")
        try:
            fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise LaunchError(
                f"{output_dir} is being written by another run ({holder}): wait for it, stop it, or give this run "
                "its own folder (name=... or hydra.run.dir=...)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.lockf(self._file, fcntl.LOCK_UN)
            self._file.close()


def release_accelerator_state() -> None:
    """Forget the process-wide ``AcceleratorState`` (not the process group) after a run.

    Hydra ``--multirun`` and the tests run several trainings in one process; ``accelerate`` keeps
    one global state and refuses a second ``Accelerator`` with other settings (e.g. another
    ``mixed_precision``). accelerate offers no public call for this; its own tests use this one.
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def _requested(engine: str) -> bool:
    """Whether the launcher asked for ``FSDP`` or ``DEEPSPEED`` (``accelerate launch`` sets ACCELERATE_USE_*)."""
    return os.environ.get(f"ACCELERATE_USE_{engine}", "false").lower() == "true"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _promote_to_fsdp(accelerator: Any, mixed_precision: str) -> None:
    """Turn a ``MULTI_CPU`` accelerator into an FSDP one, configured by the launcher's ``FSDP_*`` settings.

    accelerate decides FSDP only for GPU-like groups (``AcceleratorState.__init__``); this sets what that
    branch would have set. Checked by tests/train/test_sharded.py against 1-process training.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()  # every field from the launcher's FSDP_* environment
    if plugin.fsdp_version != 2:
        raise LaunchError("FSDP on CPU processes needs FSDP2: set fsdp_version: 2 in the accelerate config")
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP
    if accelerator.is_main_process:
        logger.info("FSDP2 on %d CPU processes (gloo)", accelerator.num_processes)

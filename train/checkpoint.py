"""Training checkpoints: written atomically, complete enough to resume bit for bit.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNN/`` holding

* the embedder for inference and export (``backbone/``, ``tokenizer/`` with the delimiters,
  ``heads.safetensors``, ``embedder_config.json``), loadable by
  ``models.DecoderEmbedder.from_pretrained``;
* ``training_state/`` from ``accelerate``'s ``save_state``: weights, optimizer, scheduler,
  gradient scaler and every process's RNG states (Python, NumPy, torch, CUDA);
* ``train_config.yaml`` (the resolved config) and ``trainer_state.json`` (step = data position,
  samples seen, last metrics).

Every process writes into ``.step-NNNNNN.tmp`` and the main process renames it when all are done,
so an interrupted write never leaves a ``step-*`` folder that looks complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from models import DecoderEmbedder

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
RUN_CONFIG = "train_config.yaml"
TRAINING_STATE_DIR = "training_state"
DATA_STATE_DIR = "data_state"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    accelerator: Any,
    model: Any,
    embedder: DecoderEmbedder,
    output_dir: Path,
    step: int,
    trainer_state: dict[str, Any],
    run_config_yaml: str,
    keep: int,
    data_state: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` (call on every process) and keep the newest ``keep`` (0 = all).

    ``model`` is the prepared (wrapped) model; with FSDP or DeepSpeed its full state dict is
    gathered from every process before the main process writes the inference folder.
    ``data_state`` is this process's data position when it is not a function of the step (a
    stream), written by every process as ``data_state/rank-N.json``.
    """
    from accelerate.utils import DistributedType

    root = output_dir / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    staging = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging / TRAINING_STATE_DIR))
    if data_state is not None:
        (staging / DATA_STATE_DIR).mkdir(exist_ok=True)
        (staging / DATA_STATE_DIR / f"rank-{accelerator.process_index}.json").write_text(json.dumps(data_state))
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state_dict = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        embedder.save_pretrained(staging, state_dict=state_dict)
        (staging / RUN_CONFIG).write_text(run_config_yaml)
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if final.exists():  # the same step written again: replace it
            shutil.rmtree(final)
        staging.rename(final)
        _prune(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    found = [path for path in (output_dir / CHECKPOINTS_DIR).glob("step-*") if (path / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix("step-")))


def find_resume_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from: ``None`` (start fresh), ``auto`` (newest, if any) or a path.

    Raises:
        FileExistsError: starting fresh in a folder that already has checkpoints.
        FileNotFoundError: an explicit path that is not a finished checkpoint.
    """
    existing = list_checkpoints(output_dir)
    if resume is None:
        if existing:
            raise FileExistsError(
                f"{output_dir} already holds checkpoints (newest {existing[-1].name}): pass resume=auto to "
                "continue that run, or start a new one elsewhere (name=... or hydra.run.dir=...)"
            )
        return None
    if resume == "auto":
        return existing[-1] if existing else None
    path = Path(resume).expanduser()
    if not (path / TRAINER_STATE).is_file() or not (path / TRAINING_STATE_DIR).is_dir():
        raise FileNotFoundError(f"resume={resume}: not a finished training checkpoint (no {TRAINER_STATE})")
    return path


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def read_data_state(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s saved data position (streams only), or ``None``."""
    path = checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _prune(output_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for stale in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)

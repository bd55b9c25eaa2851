"""Training checkpoints: written atomically, complete enough to resume bit for bit.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNN/`` holding

* the embedder for inference and export (``backbone/``, ``tokenizer/`` with the delimiters,
  ``heads.safetensors``, ``embedder_config.json``), loadable by
  ``models.DecoderEmbedder.from_pretrained``;
* ``training_state/`` from ``accelerate``'s ``save_state``: weights, optimizer, scheduler,
  gradient scaler and every process's RNG states (Python, NumPy, torch, CUDA). Under LoRA its
  weights are the trainable ones only (adapters, delimiter rows, heads): the frozen base is rebuilt
  from the identity in ``embedder_config.json`` and its weight hash checked before resuming
  (:func:`keep_only_trainable_state`, :func:`check_resume_base`);
* ``scheduler.json``: the learning-rate scheduler's state, as JSON (not pickled);
* ``data_state/rank-N.json`` for streamed data: each process's stream position;
* ``train_config.yaml`` (the resolved config) and ``trainer_state.json`` (step = data position,
  samples seen, last metrics).

Every process writes into ``.step-NNNNNN.tmp`` and the main process renames it when all are done,
so an interrupted write never leaves a ``step-*`` folder that looks complete. Deleting (pruning, or
replacing a step written again) first renames the folder to ``.step-NNNNNN.deleting``, so a kill
mid-delete never leaves a ``step-*`` without its weights; :func:`is_complete` also checks the
weights themselves.

Trusted input: resuming loads accelerate's files with ``torch.load(weights_only=True)`` (weights,
optimizer, RNG states) and this module's JSON; nothing is unpickled with ``weights_only=False``.
A copied checkpoint is still trusted for its *values* (weights, learning-rate state): resume only
from checkpoints you or your pipeline wrote.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from models import DecoderEmbedder
from pairdata.provenance import RUN_CONFIG  # pairdata reads it back (the audit, mteb metadata)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"
DATA_STATE_DIR = "data_state"
SCHEDULER_STATE = "scheduler.json"


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
    scheduler: Any = None,
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
        if scheduler is not None:
            (staging / SCHEDULER_STATE).write_text(json.dumps(scheduler.state_dict()) + "\n")
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        old = _set_aside(final) if final.exists() else None  # the same step written again: replace it
        staging.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _prune(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def keep_only_trainable_state(accelerator: Any) -> None:
    """Make ``save_state`` write only trainable parameters and ``load_state`` expect exactly those.

    For LoRA runs, whose frozen base would otherwise be copied into every checkpoint (16 GB for an
    8B model in bf16). Load with ``accelerator.load_state(..., strict=False)`` after the hook's
    own check, which names any missing, unexpected or reshaped tensor.
    """
    from safetensors import safe_open

    def trainable(model: Any) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}

    def before_save(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for index, model in enumerate(models):
            names = trainable(model)
            weights[index] = {key: value for key, value in weights[index].items() if key in names}

    def before_load(models: list[Any], input_dir: str) -> None:
        for index, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")
            with safe_open(str(path), framework="pt") as file:
                saved = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
            expected = trainable(model)
            if saved != expected:
                missing = sorted(set(expected) - set(saved))
                extra = sorted(set(saved) - set(expected))
                reshaped = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
                raise ValueError(
                    f"{path} does not hold this run's trainable weights (another model.lora or model config?): "
                    f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                    f"{extra[:3]}{'...' if len(extra) > 3 else ''}, other shapes {reshaped[:3]}"
                )

    accelerator.register_save_state_pre_hook(before_save)
    accelerator.register_load_state_pre_hook(before_load)


def check_resume_base(checkpoint: Path, embedder: DecoderEmbedder) -> None:
    """Refuse to resume a LoRA run on a base whose weight hash differs from the checkpoint's."""
    from models.embedder import CONFIG_NAME

    saved = json.loads((checkpoint / CONFIG_NAME).read_text()).get("base_model")
    if embedder.base_identity is None or saved is None:
        if (embedder.base_identity is None) != (saved is None):
            raise ValueError(
                f"resume={checkpoint}: the checkpoint was trained {'with' if saved else 'without'} LoRA and this run "
                f"is configured {'with' if embedder.base_identity else 'without'} it (model.lora.r)"
            )
        return
    if saved.get("sha256") != embedder.base_identity.sha256:
        raise ValueError(
            f"resume={checkpoint}: this run's base model ({embedder.base_identity.pretrained}, "
            f"{embedder.base_identity.dtype}) has weight sha256 {embedder.base_identity.sha256[:16]}..., the "
            f"checkpoint's adapters were trained on {str(saved.get('sha256'))[:16]}...: resume with the same base"
        )


def is_complete(checkpoint: Path) -> bool:
    """A finished checkpoint: its trainer state, inference folder and training state with weights."""
    from models.embedder import is_complete_export

    return (
        (checkpoint / TRAINER_STATE).is_file()
        and is_complete_export(checkpoint)
        and any((checkpoint / TRAINING_STATE_DIR).glob("model*.safetensors"))
    )


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    found = [path for path in (output_dir / CHECKPOINTS_DIR).glob("step-*") if is_complete(path)]
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
    if not is_complete(path):
        raise FileNotFoundError(
            f"resume={resume}: not a finished training checkpoint (needs {TRAINER_STATE}, the embedder's "
            f"weights and {TRAINING_STATE_DIR}/model*.safetensors)"
        )
    return path


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def read_data_state(checkpoint: Path, rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s saved data position (streams only), or ``None``."""
    path = checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def load_scheduler_state(checkpoint: Path, scheduler: Any) -> None:
    """Restore the scheduler from ``scheduler.json``."""
    path = checkpoint / SCHEDULER_STATE
    if not path.is_file():
        raise FileNotFoundError(
            f"{checkpoint} holds no {SCHEDULER_STATE}: it was written before the scheduler state left pickle "
            "(resume from a checkpoint of this version, or start the run again)"
        )
    scheduler.load_state_dict(json.loads(path.read_text()))


def refuse_pickled_state(checkpoint: Path) -> None:
    """Refuse a checkpoint holding ``custom_checkpoint_*.pkl``: accelerate would unpickle it with
    ``weights_only=False``, which runs whatever code the file names."""
    pickled = sorted(p.name for p in (checkpoint / TRAINING_STATE_DIR).glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise ValueError(
            f"{checkpoint / TRAINING_STATE_DIR} holds pickled objects {pickled} that resuming would unpickle "
            "(running any code inside them). This trainer never writes them: the checkpoint was written by an "
            "older version or modified. Check where it came from, delete the files and add a scheduler.json, "
            "or start from another checkpoint"
        )


def remove_leftovers(output_dir: Path) -> None:
    """Finish deletes a killed run left half-done (``.step-*.deleting``)."""
    for leftover in (output_dir / CHECKPOINTS_DIR).glob(".step-*.deleting"):
        shutil.rmtree(leftover, ignore_errors=True)


def _set_aside(checkpoint: Path) -> Path:
    """Rename a checkpoint out of the ``step-*`` namespace, so deleting it is atomic to readers."""
    aside = checkpoint.with_name(f".{checkpoint.name}.deleting")
    shutil.rmtree(aside, ignore_errors=True)
    checkpoint.rename(aside)
    return aside


def _prune(output_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for stale in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(_set_aside(stale), ignore_errors=True)

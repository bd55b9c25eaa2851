"""Training checkpoints: written atomically and durably, complete enough to resume bit for bit.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNN/`` holding

* the embedder for inference and export (``backbone/``, ``tokenizer/`` with the delimiters,
  ``heads.safetensors``, ``embedder_config.json``), loadable by
  ``models.DecoderEmbedder.from_pretrained``;
* ``training_state/`` from ``accelerate``'s ``save_state``: weights, optimizer (sharded under FSDP),
  gradient scaler and every process's RNG states (Python, NumPy, torch, CUDA). Under LoRA its
  weights are the trainable ones only (adapters, delimiter rows, heads): the frozen base is rebuilt
  from the identity in ``embedder_config.json`` and its weight hash checked before resuming;
* ``scheduler.json``: the learning-rate scheduler's state, as JSON (not pickled);
* ``data_state/rank-N.json`` for streamed data: each process's stream position;
* ``train_config.yaml`` (the resolved config) and ``trainer_state.json`` (step = data position,
  samples seen, last metrics);
* ``manifest.json``, written last: every file's size and hash (:mod:`models.manifest`, the one
  owner of "is this checkpoint complete").

Every process writes into ``.step-NNNNNN.tmp``; when all are done the main process syncs every file
to disk, writes the manifest and renames the folder, so neither a kill nor a power cut leaves a
``step-*`` folder that looks complete and is not. Deleting (pruning, or replacing a step written
again) first renames the folder to ``.step-NNNNNN.deleting``. Resuming checks the manifest's sizes of
every checkpoint and the hashes of the one it loads; a damaged newest checkpoint is skipped, with a
warning, for the newest undamaged one.

Trusted input: resuming loads accelerate's files with ``torch.load(weights_only=True)`` (weights,
optimizer, RNG states) and this module's JSON; nothing is unpickled with ``weights_only=False``.
A copied checkpoint is still trusted for its *values* (weights, learning-rate state): resume only
from checkpoints you or your pipeline wrote.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import DecoderEmbedder
from models.embedder import CONFIG_NAME
from models.manifest import damage, fsync_dir, fsync_tree, write_manifest
from pairdata.provenance import RUN_CONFIG  # pairdata reads it back (the audit, mteb metadata)

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"
DATA_STATE_DIR = "data_state"
SCHEDULER_STATE = "scheduler.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass
class Checkpointer:
    """Writes a run's checkpoints and restores the one to resume from.

    Args:
        accelerator: the run's accelerator (every process calls :meth:`save` and :meth:`restore`).
        model: the prepared (possibly wrapped or sharded) model.
        embedder: the unwrapped embedder.
        scheduler: the learning-rate scheduler, saved as JSON.
        output_dir: the run folder.
        keep: newest checkpoints kept (0 = all).
        run_config_yaml: the resolved config, written into every checkpoint.
    """

    accelerator: Any
    model: Any
    embedder: DecoderEmbedder
    scheduler: Any
    output_dir: Path
    keep: int
    run_config_yaml: str

    def __post_init__(self) -> None:
        if self.embedder.lora is not None and not self._sharded:
            keep_only_trainable_state(self.accelerator)

    @property
    def _sharded(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def save(self, step: int, trainer_state: dict[str, Any], data_state: dict[str, Any] | None) -> Path:
        """Write checkpoint ``step`` (every process) and keep the newest ``keep``.

        ``data_state``: this process's data position when it is not a function of the step (a stream).
        """
        accelerator = self.accelerator
        final = self.output_dir / CHECKPOINTS_DIR / checkpoint_name(step)
        staging = final.with_name(f".{final.name}.tmp")
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging / TRAINING_STATE_DIR))
        if data_state is not None:
            (staging / DATA_STATE_DIR).mkdir(exist_ok=True)
            (staging / DATA_STATE_DIR / f"rank-{accelerator.process_index}.json").write_text(json.dumps(data_state))
        state_dict = accelerator.get_state_dict(self.model) if self._sharded else None  # gathered on every process
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.embedder.save_pretrained(staging, state_dict=state_dict)
            (staging / RUN_CONFIG).write_text(self.run_config_yaml)
            (staging / SCHEDULER_STATE).write_text(json.dumps(self.scheduler.state_dict()) + "\n")
            (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
            publish(staging, final)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def restore(self, resume: str | None, data: Any) -> tuple[int, Path | None]:
        """Load the checkpoint ``resume`` names (``None``: start fresh; ``auto``: the newest undamaged one;
        or a path) into the model, optimizer, scheduler, RNG states and ``data``; returns (step, checkpoint)."""
        remove_leftovers(self.output_dir)
        checkpoint = find_resume_checkpoint(self.output_dir, resume)
        if checkpoint is None:
            return 0, None
        refuse_pickled_state(checkpoint)
        check_resume_base(checkpoint, self.embedder)
        check_random_states(checkpoint / TRAINING_STATE_DIR, self.accelerator.process_index)
        # strict=False under LoRA: the checkpoint holds the trainable weights only, checked by keep_only_trainable_state
        self.accelerator.load_state(str(checkpoint / TRAINING_STATE_DIR), strict=self.embedder.lora is None)
        load_scheduler_state(checkpoint, self.scheduler)
        data.resume(read_data_state(checkpoint, self.accelerator.process_index))
        step = json.loads((checkpoint / TRAINER_STATE).read_text())["step"]
        if self.accelerator.is_main_process:
            logger.info("resumed from %s at step %d", checkpoint, step)
        return step, checkpoint

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for stale in list_checkpoints(self.output_dir)[: -self.keep]:
            shutil.rmtree(_set_aside(stale), ignore_errors=True)


def publish(staging: Path, final: Path) -> None:
    """Sync ``staging`` to disk, seal it with a manifest and rename it to ``final`` (replacing an older copy)."""
    fsync_tree(staging)
    write_manifest(staging)
    old = _set_aside(final) if final.exists() else None  # the same step written again: replace it
    staging.rename(final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def step_folders(output_dir: Path) -> list[Path]:
    """Every ``step-*`` folder of a run, complete or not, oldest first."""
    found = (output_dir / CHECKPOINTS_DIR).glob("step-*")
    return sorted(found, key=lambda path: int(path.name.removeprefix("step-")))


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run (every file of its manifest present, at its size), oldest first."""
    return [path for path in step_folders(output_dir) if damage(path) is None]


def find_resume_checkpoint(output_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to continue from: ``None`` (start fresh), ``auto`` (newest undamaged, if any) or a path.

    Raises:
        FileExistsError: starting fresh in a folder that already has checkpoints.
        FileNotFoundError: an explicit path that is not a complete, undamaged training checkpoint.
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
        for candidate in reversed(step_folders(output_dir)):
            problem = damage(candidate, hashes=True)
            if problem is None:
                return candidate
            logger.warning("skipping damaged checkpoint %s: %s", candidate.name, problem)
        return None
    path = Path(resume).expanduser()
    problem = damage(path, hashes=True) if path.is_dir() else f"{path} is not a folder"
    if problem is not None or not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"resume={resume}: not a complete training checkpoint ({problem or f'no {TRAINER_STATE}'})"
        )
    return path


def check_random_states(state_dir: Path, rank: int) -> None:
    """Refuse a checkpoint whose RNG state for this process is missing or unreadable (accelerate would
    skip it with an INFO line, and the resumed run would silently stop being exact)."""
    from accelerate.utils import load

    path = state_dir / f"random_states_{rank}.pkl"
    try:
        states = load(path)
        missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    except Exception as error:  # accelerate's loader raises whatever torch.load meets
        raise ValueError(f"{path}: the RNG state of process {rank} is unreadable ({error}); resume from an "
                         "earlier checkpoint or start again") from None  # fmt: skip
    if missing:
        raise ValueError(f"{path}: the RNG state lacks {sorted(missing)}")


def keep_only_trainable_state(accelerator: Any) -> None:
    """Make ``save_state`` write only trainable parameters and ``load_state`` expect exactly those.

    For LoRA runs, whose frozen base would otherwise be copied into every checkpoint (16 GB for an
    8B model in bf16). Load with ``accelerator.load_state(..., strict=False)`` after the hook's
    own check, which names any missing, unexpected or reshaped tensor.
    """

    def trainable(model: Any) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}

    def before_save(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for index, model in enumerate(models):
            names = trainable(model)
            weights[index] = {key: value for key, value in weights[index].items() if key in names}

    def before_load(models: list[Any], input_dir: str) -> None:
        for index, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")
            check_trainable_weights(path, trainable(model))

    accelerator.register_save_state_pre_hook(before_save)
    accelerator.register_load_state_pre_hook(before_load)


def check_trainable_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Raise a ``ValueError`` naming what differs between the tensors in ``path`` and ``expected``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        saved = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    if saved == expected:
        return
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    reshaped = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    raise ValueError(
        f"{path} does not hold this run's trainable weights (another model.lora or model config?): "
        f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
        f"{extra[:3]}{'...' if len(extra) > 3 else ''}, other shapes {reshaped[:3]}"
    )


def check_resume_base(checkpoint: Path, embedder: DecoderEmbedder) -> None:
    """Refuse to resume a LoRA run on a base whose weight hash differs from the checkpoint's."""
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

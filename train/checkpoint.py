"""Writing training checkpoints atomically: a temporary folder, then one rename.

A checkpoint is ``OUTPUT/checkpoints/step-NNNNNN/`` holding the embedder (backbone weights,
tokenizer with delimiters, heads, ``embedder_config.json``), the resolved run config and the
trainer state (step, samples seen). ``models.DecoderEmbedder.from_pretrained`` loads it, or the
newest one when given the run folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models import DecoderEmbedder

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
RUN_CONFIG = "train_config.yaml"


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    model: DecoderEmbedder,
    output_dir: Path,
    step: int,
    trainer_state: dict[str, Any],
    run_config_yaml: str,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` and keep only the newest ``keep`` (``keep <= 0`` keeps all).

    Call on the main process only. An interrupted write leaves only a hidden temporary folder,
    never a ``step-*`` folder that looks complete.
    """
    root = output_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        model.save_pretrained(staging)
        (staging / RUN_CONFIG).write_text(run_config_yaml)
        (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if final.exists():  # re-running the same step: replace the old one
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(root, keep)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = output_dir / CHECKPOINTS_DIR
    found = [path for path in root.glob("step-*") if (path / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix("step-")))


def _prune(root: Path, keep: int) -> None:
    if keep <= 0:
        return
    for stale in list_checkpoints(root.parent)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)

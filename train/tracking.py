"""Metrics out of the loop: a local JSONL file and accelerate's trackers (wandb), main process only."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


def tracker_settings(backend: str, mode: str) -> tuple[str | None, dict[str, Any]]:
    """``log_with`` for ``Accelerator`` and the wandb init kwargs, validated.

    ``WANDB_MODE`` in the environment wins over the configured mode (tests set ``disabled``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"logging.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "none":
        return None, {}
    mode = os.environ.get("WANDB_MODE", mode)
    if mode not in WANDB_MODES:
        raise ValueError(f"logging.mode must be one of {WANDB_MODES}, got {mode!r}")
    return "wandb", {"mode": mode}


class MetricsFile:
    """Appends one JSON object per logged step to ``metrics.jsonl``, flushed at once."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written by a run that died after its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
        temporary = self.path.with_suffix(".jsonl.tmp")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, self.path)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in record.items()}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean) + "\n")

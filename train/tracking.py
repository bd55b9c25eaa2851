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


def start_trackers(
    accelerator: Any, cfg: Any, log_with: str | None, wandb_kwargs: dict[str, Any], output_dir: Path
) -> None:
    """Start accelerate's trackers (wandb) with the resolved config, when a backend is configured."""
    if not log_with:
        return
    from omegaconf import OmegaConf

    accelerator.init_trackers(
        cfg.logging.project,
        config=OmegaConf.to_container(cfg, resolve=True),
        init_kwargs={"wandb": {**wandb_kwargs, "name": cfg.name, "dir": str(output_dir)}},
    )


def describe_run(accelerator: Any, embedder: Any, data: Any, settings: Any, name: str, start_step: int) -> None:
    """Log, on the main process, what is about to train: data, steps, batch, negatives, weights, precision."""
    if not accelerator.is_main_process:
        return
    parameters = list(embedder.parameters())
    total = sum(_numel(p) for p in parameters)
    trained = [p for p in parameters if p.requires_grad]
    trainable = sum(_numel(p) for p in trained)
    trained_low = sorted({str(p.dtype).removeprefix("torch.") for p in trained if p.element_size() < 4})
    if trained_low:
        logger.warning(
            "training weights held in %s directly: AdamW's small updates are mostly lost to rounding "
            "(the offline default with model.dtype=bfloat16 reached held-out top-1 0.65 instead of 0.92); "
            "keep trained weights in float32 and use bfloat16 for frozen ones",
            "/".join(trained_low),
        )
    world = accelerator.num_processes
    logger.info(
        "training %s on %s pairs (%s): steps %d..%d x %d pairs (%d processes, %s), %d in-batch negatives per item%s; "
        "%d of %d parameters trainable (weights in %s); mixed precision %s%s",
        name, "a stream of" if data.train_rows is None else data.train_rows, ", ".join(data.names),
        start_step + 1, settings.steps, data.global_batch, world, str(accelerator.distributed_type).split(".")[-1],
        settings.batch_size * world - 1,
        f" + up to {data.num_negatives} hard negatives per row (x -> y)" if data.num_negatives else "",
        trainable, total, "/".join(sorted({str(p.dtype).removeprefix("torch.") for p in parameters})),
        accelerator.mixed_precision, " (auto)" if settings.mixed_precision == "auto" else "",
    )  # fmt: skip
    if embedder.lora is not None:
        from models.lora import describe_adapters

        identity = embedder.base_identity
        logger.info(
            "LoRA (%.2f%% of the parameters trainable): %s; base %s, %s, weight sha256 %s...",
            100 * trainable / total, describe_adapters(embedder), identity.pretrained or "random",
            identity.dtype, identity.sha256[:16],
        )  # fmt: skip


def _numel(parameter: Any) -> int:
    """A parameter's full size, also when ZeRO-3 holds only this process's partition of it."""
    return getattr(parameter, "ds_numel", None) or parameter.numel()

"""The trainer config group as a typed object: unknown keys and bad values fail before training."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainerSettings:
    """Keys of ``configs/trainer/*.yaml`` (see that folder for what each one means)."""

    steps: int
    batch_size: int
    max_length: int
    lr: float
    grad_accum_steps: int = 1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    train_top_layers: int | None = None
    val_pairs: int = 0
    gradcache_chunk: int | None = None
    eval_every: int = 0
    temperature_lr: float | None = None
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    num_workers: int = 0
    prefetch_factor: int = 2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainerSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; valid options are {sorted(known)}")
        settings = cls(**{key: config[key] for key in config})
        settings.betas = tuple(settings.betas)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("steps", "batch_size", "max_length", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 3:
            raise ValueError(f"trainer.max_length must be >= 3 (two delimiters + one token), got {self.max_length}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"trainer.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.gradcache_chunk is not None and self.gradcache_chunk < 1:
            raise ValueError(f"trainer.gradcache_chunk must be >= 1 or null, got {self.gradcache_chunk}")
        if self.num_workers < 0:
            raise ValueError(f"trainer.num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ValueError(f"trainer.prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")

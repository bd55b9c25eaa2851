"""The trainer config group as a typed object: unknown keys and bad values fail before training."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.precision import native_bf16

MIXED_PRECISION = ("no", "bf16", "fp16", "auto")


class ConfigError(ValueError):
    """A ``trainer.*`` value that cannot run, named with what would (the entry point prints it in one line)."""


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
    num_negatives: int = 0
    eval_every: int = 0
    temperature_lr: float | None = None
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None
    num_workers: int = 0
    prefetch_factor: int = 2
    packing: bool = False
    pack_length: int | None = None
    compile: bool = False
    eval_benchmarks: dict[str, Any] | None = None
    best_metric: str | None = None
    best_mode: str = "max"

    def resolved_mixed_precision(self) -> str:
        """``mixed_precision`` with ``auto`` resolved: ``bf16`` where this process's device computes
        bf16 natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX), else ``no``.
        Emulated bf16 is far slower than fp32 (~100x for a matmul on an AVX2-only CPU), so ``auto``
        never picks it."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "bf16" if native_bf16() else "no"

    def check_distributed(self, distributed_type: Any) -> None:
        """Refuse options that the launched distributed engine cannot run."""
        sharded = str(distributed_type).endswith(("FSDP", "DEEPSPEED"))
        if sharded and (self.eval_benchmarks or self.best_metric):
            raise ConfigError(
                "trainer.eval_benchmarks and trainer.best_metric score and save the whole model on the main process, "
                "which FSDP and DeepSpeed hold in shards: set them to null and score the checkpoints afterwards "
                "(python eval/run.py source=checkpoint ...), or train with DDP"
            )
        if str(distributed_type).endswith("DEEPSPEED") and (self.gradcache_chunk or self.grad_accum_steps > 1):
            raise ConfigError(
                "trainer.gradcache_chunk and trainer.grad_accum_steps > 1 do not compose with DeepSpeed (its "
                "engine owns backward, accumulation and the optimizer step): use DDP or FSDP for them "
                "(configs/accelerate/), or set trainer.gradcache_chunk=null trainer.grad_accum_steps=1"
            )

    @property
    def pack_tokens(self) -> int | None:
        """Tokens per packed sequence when packing (``pack_length``, else ``max_length``), else None."""
        return (self.pack_length or self.max_length) if self.packing else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrainerSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown trainer option(s) {unknown}; valid options are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for key, value in config.items():
            check_type(f"trainer.{key}", value, hints[key])
        settings = cls(**{key: config[key] for key in config})
        settings.betas = tuple(settings.betas)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("steps", "batch_size", "max_length", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 3:
            raise ConfigError(f"trainer.max_length must be >= 3 (two delimiters + one token), got {self.max_length}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"trainer.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.gradcache_chunk is not None and self.gradcache_chunk < 1:
            raise ConfigError(f"trainer.gradcache_chunk must be >= 1 or null, got {self.gradcache_chunk}")
        if self.num_workers < 0:
            raise ConfigError(f"trainer.num_workers must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ConfigError(f"trainer.prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if self.pack_length is not None and self.pack_length < self.max_length:
            raise ConfigError(
                f"trainer.pack_length must be >= trainer.max_length ({self.max_length}) or null, got {self.pack_length}"
            )
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "eval_every", "num_negatives"):
            if getattr(self, name) < 0:
                raise ConfigError(f"trainer.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"trainer.lr must be > 0, got {self.lr}")
        if self.best_mode not in ("max", "min"):
            raise ConfigError(f"trainer.best_mode must be max or min, got {self.best_mode!r}")
        if self.best_metric is not None and not self.eval_benchmarks and not self.best_metric.startswith("val_"):
            raise ConfigError(
                f"trainer.best_metric={self.best_metric!r} names a benchmark score but trainer.eval_benchmarks is empty"
            )


def check_type(name: str, value: Any, hint: Any) -> None:
    """Raise a ``ValueError`` naming ``name`` when ``value`` does not fit the annotation ``hint``."""
    if _fits(value, hint):
        return
    expected = str(hint).replace("typing.", "") if typing.get_origin(hint) else hint.__name__
    raise ConfigError(f"{name} must be of type {expected}, got {value!r} ({type(value).__name__})")


def _fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is dict:
        return isinstance(value, Mapping)
    if origin in (list, tuple):  # any sequence: the config hands over OmegaConf's ListConfig
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return False
        return all(_fits(item, args[0]) for item in value) if args else True
    return True

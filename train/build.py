"""Building a run: everything the step loop needs, constructed once from the config.

:func:`build_run` turns ``cfg`` into a :class:`Run` in one pass over the run's parts (processes,
model, data, optimization, loss, resume, tracking, validation), each built by the module that owns
it; :mod:`train.loop` then only steps. The order matters where parts depend on each other: the
accelerator first (it decides the processes and the device), the model and data under
``main_process_first`` (the first load may convert the offline model into a cache), the optimizer
before ``prepare`` (which shards or wraps both), the resume last (it loads into all of them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from models.backbone import resolve_pretrained
from train.checkpoint import Checkpointer
from train.data import Tokenization, TrainingData, build_training_data
from train.evaluation import Validator
from train.freezing import freeze_for_training, lora_in_top_layers
from train.launch import RunFolderLock, configure_engine, make_accelerator
from train.losses import ContrastiveLoss, Matryoshka, build_loss
from train.optim import adamw, lr_schedule
from train.settings import TrainerSettings
from train.tracking import MetricsFile, describe_run, start_trackers, tracker_settings

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """A built run: what :func:`train.loop.train_steps` loops over, and nothing it has to construct."""

    settings: TrainerSettings
    output_dir: Path
    accelerator: Any
    model: torch.nn.Module  # prepared (possibly wrapped or sharded) for the backward pass
    embedder: Any  # the unwrapped DecoderEmbedder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss: ContrastiveLoss
    data: TrainingData
    sides: tuple[str, str]
    metrics_file: MetricsFile
    checkpointer: Checkpointer
    validator: Validator
    lock: RunFolderLock | None  # held by the main process while the run writes its folder
    start_step: int = 0
    checkpoint: Path | None = None


def build_run(cfg: DictConfig, output_dir: Path) -> Run:
    """Build the processes, model, data, optimizer, scheduler, loss and validation, and resume if asked."""
    from accelerate.utils import set_seed

    settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
    log_with, wandb_kwargs = tracker_settings(cfg.logging.backend, cfg.logging.mode)
    accelerator = make_accelerator(settings.resolved_mixed_precision(), log_with, output_dir)
    settings.check_distributed(accelerator.distributed_type)
    configure_engine(accelerator, settings.batch_size)
    lock = RunFolderLock(output_dir) if accelerator.is_main_process else None
    try:
        set_seed(cfg.seed)
        sides = pair_sides(cfg.tower)
        with accelerator.main_process_first():  # the first load converts the offline model (and data) into caches
            if cfg.model.get("pretrained"):
                resolve_pretrained(cfg.model.pretrained)
            dataset = hydra.utils.instantiate(cfg.data)
        embedder = build_embedder(cfg, settings)  # on every process at once: ZeRO-3 builds it collectively
        data = build_data(dataset, embedder, sides, settings, cfg.seed, accelerator)
        optimizer = adamw(embedder, settings)
        scheduler = lr_schedule(optimizer, settings)
        model, optimizer = accelerator.prepare(embedder, optimizer)  # the scheduler is saved as JSON, not pickled
        embedder = accelerator.unwrap_model(model)
        matryoshka = Matryoshka.from_settings(
            settings.matryoshka_dims, settings.matryoshka_weights, embedder.embedding_dim
        )
        if matryoshka is not None:
            embedder.matryoshka_dims = sorted(matryoshka.dims)  # recorded in every checkpoint's config
        run_config = OmegaConf.to_yaml(cfg, resolve=True)
        checkpointer = Checkpointer(
            accelerator, model, embedder, scheduler, output_dir, settings.keep_checkpoints, run_config
        )
        start_step, checkpoint = checkpointer.restore(cfg.get("resume"), data)
        metrics_file = MetricsFile(output_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
        metrics_file.truncate_after(start_step if checkpoint else -1)  # a run that died before a checkpoint restarts
        start_trackers(accelerator, cfg, log_with, wandb_kwargs, output_dir)
        describe_run(accelerator, embedder, data, settings, cfg.name, start_step)
        validator = Validator(
            accelerator, data.validation, sides, settings, cfg.name, output_dir, metrics_file, run_config,
            prefix_dims=matryoshka.dims if matryoshka else (),
        )  # fmt: skip
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Run(
        settings=settings, output_dir=output_dir, accelerator=accelerator, model=model, embedder=embedder,
        optimizer=optimizer, scheduler=scheduler, loss=build_loss(accelerator.process_index,
        accelerator.num_processes, matryoshka), data=data, sides=sides, metrics_file=metrics_file,
        checkpointer=checkpointer, validator=validator, lock=lock, start_step=start_step, checkpoint=checkpoint,
    )  # fmt: skip


def pair_sides(tower: DictConfig) -> tuple[str, str]:
    """``tower.pair_sides`` (x side, y side), checked against the tower's sides."""
    x_side, y_side = tower.pair_sides
    if x_side not in tower.sides or y_side not in tower.sides:
        raise ValueError(f"tower.pair_sides {list(tower.pair_sides)} must name sides of {list(tower.sides)}")
    return x_side, y_side


def build_embedder(cfg: DictConfig, settings: TrainerSettings) -> Any:
    """The model as ``cfg.model`` says (its sides from ``cfg.tower``), frozen and compiled as ``settings`` say."""
    embedder = hydra.utils.instantiate(
        cfg.model, _convert_="all", **lora_in_top_layers(cfg.model, settings.train_top_layers)
    )
    freeze_for_training(embedder, settings.train_top_layers)
    if settings.compile:
        for backbone in embedder.backbone_folders().values():  # in place: parameter names stay the eager model's
            backbone.compile(dynamic=True)
    return embedder


def build_data(
    dataset: Any, embedder: Any, sides: tuple[str, str], settings: TrainerSettings, seed: int, accelerator: Any
) -> TrainingData:
    """This process's steps of tokenized micro-batches over ``dataset`` (:mod:`train.data`)."""
    tokenization = Tokenization(
        embedder.tokenizer, embedder.sides[sides[0]], embedder.sides[sides[1]], settings.max_length,
        embedder.padding_side,
    )  # fmt: skip
    return build_training_data(
        dataset, tokenization, seed=seed, steps=settings.steps, batch_size=settings.batch_size,
        accum_steps=settings.grad_accum_steps, rank=accelerator.process_index, world_size=accelerator.num_processes,
        val_pairs=settings.val_pairs, num_workers=settings.num_workers, prefetch_factor=settings.prefetch_factor,
        pin_memory=accelerator.device.type == "cuda", num_negatives=settings.num_negatives,
    )  # fmt: skip

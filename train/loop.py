"""The training loop: batches of pairs -> embeddings -> symmetric InfoNCE -> AdamW step.

Owns the order of work in a run (setup, resume, steps, validation, checkpoints); the model
(``models``), the loss (``train.losses``), GradCache (``train.gradcache``), the batch order
(``train.batching``), checkpoints and metrics live in their own modules.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models import truncate_embeddings
from pairdata import Pair
from train.batching import StepBatcher
from train.checkpoint import TRAINING_STATE_DIR, find_resume_checkpoint, read_trainer_state, save_checkpoint
from train.distributed import release_accelerator_state
from train.freezing import train_only_top_layers
from train.gradcache import gradcache_backward
from train.losses import Matryoshka, symmetric_info_nce
from train.settings import TrainerSettings
from train.tracking import MetricsFile, tracker_settings

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before the weights are touched."""


def parameter_groups(
    model: torch.nn.Module, weight_decay: float, lr: float, temperature_lr: float | None
) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on biases, norms and embeddings; the temperature
    in a group of its own (at ``temperature_lr`` when set, since at a fine-tuning rate it barely moves)."""
    decay, no_decay, temperature = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.endswith("log_scale"):
            temperature.append(parameter)
        elif parameter.ndim < 2 or "embed" in name:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        {"params": temperature, "weight_decay": 0.0, "lr": temperature_lr or lr},
    ]
    return [group for group in groups if group["params"]]


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run contrastive training as configured; return the final metrics and checkpoint path.

    Creates the ``Accelerator`` here and nowhere else. Works unchanged on one process or many
    (``accelerate launch``): negatives are gathered across processes by the loss. Can be called
    again in the same process (Hydra multirun), with other settings.
    """
    try:
        return _train(cfg, output_dir)
    finally:
        release_accelerator_state()


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    import hydra
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
    log_with, wandb_kwargs = tracker_settings(cfg.logging.backend, cfg.logging.mode)
    resume_from = find_resume_checkpoint(output_dir, cfg.get("resume"))
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, log_with=log_with, project_dir=str(output_dir))
    if accelerator.distributed_type == DistributedType.DEEPSPEED and (
        settings.gradcache_chunk or settings.grad_accum_steps > 1
    ):
        raise ValueError(
            "trainer.gradcache_chunk and trainer.grad_accum_steps > 1 do not compose with DeepSpeed (its "
            "engine owns backward, accumulation and the optimizer step): use DDP or FSDP for them "
            "(configs/accelerate/), or set trainer.gradcache_chunk=null trainer.grad_accum_steps=1"
        )
    set_seed(cfg.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    tower = cfg.tower
    x_side, y_side = tower.pair_sides
    if x_side not in tower.sides or y_side not in tower.sides:
        raise ValueError(f"tower.pair_sides {list(tower.pair_sides)} must name sides of {list(tower.sides)}")

    with accelerator.main_process_first():  # the first load may convert the offline model into the cache
        model = hydra.utils.instantiate(
            cfg.model, sides=OmegaConf.to_container(tower.sides), shared_weights=tower.shared_weights
        )
    pairs: Sequence[Pair] = hydra.utils.instantiate(cfg.data)
    pairs, val_pairs = split_validation(pairs, settings.val_pairs, cfg.seed)
    global_batch = settings.batch_size * world * settings.grad_accum_steps
    batcher = StepBatcher(pairs, global_batch, cfg.seed)

    if settings.train_top_layers:
        backbones = [model.backbone] if model.shared_weights else list(model.backbones.values())
        train_only_top_layers(backbones, settings.train_top_layers)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings.weight_decay, settings.lr, settings.temperature_lr),
        lr=settings.lr,
        betas=settings.betas,
    )
    # Stepped by hand once per optimizer step (accelerate's wrapper would step it once per process).
    scheduler = get_scheduler(
        settings.scheduler, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=settings.steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    embedder = accelerator.unwrap_model(model)
    matryoshka = Matryoshka.from_settings(settings.matryoshka_dims, settings.matryoshka_weights, embedder.embedding_dim)
    if matryoshka is not None:
        embedder.matryoshka_dims = sorted(matryoshka.dims)  # recorded in every checkpoint's config

    metrics_file = MetricsFile(output_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    start_step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from / TRAINING_STATE_DIR))
        start_step = read_trainer_state(resume_from)["step"]
        metrics_file.truncate_after(start_step)
        if accelerator.is_main_process:
            logger.info("resumed from %s at step %d", resume_from, start_step)

    run_config = OmegaConf.to_yaml(cfg, resolve=True)
    if log_with:
        accelerator.init_trackers(
            cfg.logging.project,
            config=OmegaConf.to_container(cfg, resolve=True),
            init_kwargs={"wandb": {**wandb_kwargs, "name": cfg.name, "dir": str(output_dir)}},
        )
    if accelerator.is_main_process:
        logger.info(
            "training %s on %d pairs: steps %d..%d x %d pairs (%d processes), %d negatives per item",
            cfg.name, len(pairs), start_step + 1, settings.steps, global_batch, world,
            settings.batch_size * world - 1,
        )  # fmt: skip

    def validate(step: int) -> dict[str, float]:
        if not val_pairs:
            return {}
        scores = validation_metrics(
            embedder, val_pairs, (x_side, y_side), settings.max_length, settings.batch_size,
            matryoshka.dims if matryoshka else (),
        )  # fmt: skip
        metrics_file.write({"step": step, **scores})
        accelerator.log({f"val/{key.removeprefix('val_')}": value for key, value in scores.items()}, step=step)
        return scores

    progress = tqdm(
        total=settings.steps, initial=start_step, desc="train", disable=not accelerator.is_local_main_process
    )
    record: dict[str, Any] = {}
    checkpoint = resume_from
    first_validation = validate(0) if start_step == 0 else {}
    model.train()
    for step in range(start_step, settings.steps):
        started = time.perf_counter()
        micro_batches = batcher.local_micro_batches(step, rank, world, settings.grad_accum_steps)
        loss_sum = torch.zeros((), device=accelerator.device)
        accuracy_sum = torch.zeros((), device=accelerator.device)
        tokens = torch.zeros((), device=accelerator.device)
        prefix_loss_sums: dict[str, torch.Tensor] = {}
        for index, micro in enumerate(micro_batches):
            texts = [pair.x for pair in micro] + [pair.y for pair in micro]
            sides = [x_side] * len(micro) + [y_side] * len(micro)
            batch = embedder.tokenize(texts, sides, settings.max_length)
            tokens += batch["attention_mask"].sum()
            last = index == len(micro_batches) - 1
            if settings.gradcache_chunk:
                out = gradcache_backward(
                    model, embedder, batch, sides, len(micro), settings.gradcache_chunk,
                    1.0 / settings.grad_accum_steps, rank, world,
                    no_sync=lambda: accelerator.no_sync(model), autocast=accelerator.autocast, sync_last=last,
                    backward=accelerator.backward, matryoshka=matryoshka,
                )  # fmt: skip
            else:
                with accelerator.no_sync(model) if not last else nullcontext(), accelerator.autocast():
                    embeddings = model(
                        batch["input_ids"].to(accelerator.device),
                        batch["attention_mask"].to(accelerator.device),
                        sides,
                    )  # (2B, D)
                    out = symmetric_info_nce(
                        embeddings[: len(micro)], embeddings[len(micro) :], embedder.logit_scale(), rank, world,
                        matryoshka,
                    )  # fmt: skip
                    accelerator.backward(out["loss"] / settings.grad_accum_steps)
            loss_sum += out["loss"].detach()
            accuracy_sum += out["accuracy"]
            for key in out:
                if key.startswith("loss@"):
                    prefix_loss_sums[key] = prefix_loss_sums.get(key, 0) + out[key].detach()
        loss = accelerator.reduce(loss_sum / len(micro_batches), "mean").item()
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {step + 1}; stopped before the weights were updated "
                f"(last good checkpoint: {checkpoint or 'none'}). "
                "Lower trainer.lr, raise model.min_temperature, or check the data for empty texts."
            )
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        seconds = time.perf_counter() - started
        total_tokens = accelerator.reduce(tokens, "sum").item()
        record = {
            "step": step + 1,
            "epoch": batcher.epoch_of(step + 1),
            "samples_seen": (step + 1) * global_batch,
            "loss": loss,
            "accuracy": accelerator.reduce(accuracy_sum / len(micro_batches), "mean").item(),
            "temperature": 1.0 / embedder.logit_scale().item(),
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "pairs_per_s": global_batch / seconds,
            "tokens_per_s": total_tokens / seconds,
        }
        for key, total in prefix_loss_sums.items():
            record[key] = accelerator.reduce(total / len(micro_batches), "mean").item()
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            metrics_file.write(record)
            accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"}, step=step + 1)
        progress.set_postfix(loss=f"{loss:.3f}", acc=f"{record['accuracy']:.2f}", T=f"{record['temperature']:.3f}")
        progress.update()
        if settings.eval_every and (step + 1) % settings.eval_every == 0 and step + 1 != settings.steps:
            validate(step + 1)
        periodic = settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0
        if periodic or step + 1 == settings.steps:
            state = {
                "step": step + 1,
                "samples_seen": (step + 1) * global_batch,
                "processes": world,
                "global_batch": global_batch,
                "metrics": record,
            }
            checkpoint = save_checkpoint(
                accelerator, model, embedder, output_dir, step + 1, state, run_config, settings.keep_checkpoints
            )
    progress.close()
    last_validation = validate(settings.steps) if start_step < settings.steps else {}
    if accelerator.is_main_process and first_validation and last_validation:
        logger.info(
            "held-out %d pairs: loss %.4f -> %.4f, in-batch accuracy %.3f -> %.3f",
            len(val_pairs), first_validation["val_loss"], last_validation["val_loss"],
            first_validation["val_accuracy"], last_validation["val_accuracy"],
        )  # fmt: skip
    accelerator.end_training()
    if world > 1:
        time.sleep(1.0)  # gloo's process-group teardown can hang at exit without a pause (torch 2.13)
    return {
        "metrics": record,
        "validation": {"start": first_validation, "end": last_validation},
        "checkpoint": str(checkpoint) if checkpoint else None,
        "output_dir": str(output_dir),
    }


def split_validation(pairs: Sequence[Pair], count: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out ``count`` pairs (chosen with ``seed``) for validation; the rest is for training."""
    if count <= 0:
        return list(pairs), []
    if count >= len(pairs):
        raise ValueError(f"trainer.val_pairs={count} leaves no training pairs (the data has {len(pairs)})")
    import numpy as np

    held = set(np.random.default_rng([seed, 7919]).choice(len(pairs), size=count, replace=False).tolist())
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]


@torch.no_grad()
def validation_metrics(
    embedder: Any,
    pairs: Sequence[Pair],
    sides: tuple[str, str],
    max_length: int,
    batch_size: int,
    prefix_dims: Sequence[int] = (),
) -> dict[str, float]:
    """Loss and top-1 accuracy over the held-out pairs as ONE batch (every other pair a negative),
    so values are comparable across steps; run identically on every process. For each of
    ``prefix_dims`` (Matryoshka sizes) also the accuracy of the re-normalised prefix."""
    x = embedder.encode([p.x for p in pairs], sides[0], batch_size=batch_size, max_length=max_length)
    y = embedder.encode([p.y for p in pairs], sides[1], batch_size=batch_size, max_length=max_length)
    scale = embedder.logit_scale().detach().float().cpu()
    out = symmetric_info_nce(x, y, scale)
    scores = {"val_loss": out["contrastive_loss"].item(), "val_accuracy": out["accuracy"].item()}
    for dim in prefix_dims:
        if dim < x.shape[1]:
            prefix = symmetric_info_nce(truncate_embeddings(x, dim), truncate_embeddings(y, dim), scale)
            scores[f"val_accuracy@{dim}"] = prefix["accuracy"].item()
    return scores

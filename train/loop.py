"""The training loop: micro-batches -> embeddings -> the loss -> AdamW step.

:func:`build_run` builds everything a run needs into a :class:`Run` (accelerator, model, data,
optimizer, scheduler, loss, resume); :func:`train_steps` only loops, asking :func:`backward_step`
for each micro-batch's loss whatever the path (plain or GradCache). The model (``models``), the
loss (``train.losses``), GradCache (``train.gradcache``), the data and its batch order
(``train.data``, ``train.batching``), checkpoints and metrics live in their own modules.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from models import truncate_embeddings
from models.lora import describe_adapters
from pairdata import Pair
from pairdata.trainsets import split_data_config
from train.batching import HeldOut
from train.checkpoint import (
    TRAINING_STATE_DIR,
    check_resume_base,
    find_resume_checkpoint,
    keep_only_trainable_state,
    load_scheduler_state,
    read_data_state,
    read_trainer_state,
    refuse_pickled_state,
    remove_leftovers,
    save_checkpoint,
)
from train.data import Tokenization, TrainingData, build_training_data
from train.distributed import release_accelerator_state
from train.evaluation import BestCheckpoint, TrainingEvaluator
from train.freezing import train_only_top_layers
from train.gradcache import gradcache_backward
from train.losses import ContrastiveLoss, InfoNCE, Matryoshka, build_loss, loss_inputs
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


def adamw(groups: list[dict[str, Any]], settings: TrainerSettings) -> torch.optim.AdamW:
    """AdamW, fused where the parameters' device has the fused kernel (CPU and CUDA): one kernel per
    step instead of a loop over tensors, 0.07 s instead of 0.49 s per step for SmolLM2-135M on 2 CPU
    cores (docs/benchmarks.md)."""
    try:
        return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, fused=True)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas)


def lora_in_top_layers(model_cfg: DictConfig, top_layers: int | None) -> dict[str, Any]:
    """``trainer.train_top_layers=N`` under LoRA: adapters in the top N blocks only and the delimiter rows
    frozen (as the embeddings are when training the top N blocks fully), so backward stops below them.
    Returns the ``lora`` override for the model's constructor ({} when there is nothing to change)."""
    lora = model_cfg.get("lora")
    if not top_layers or lora is None or not lora.get("r", 0):
        return {}
    return {"lora": {**OmegaConf.to_container(lora, resolve=True), "top_layers": top_layers, "train_delimiters": False}}


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run contrastive training as configured; return the final metrics and checkpoint path.

    Works unchanged on one process or many (``accelerate launch``): negatives are gathered across
    processes by the loss. Can be called again in the same process (Hydra multirun), with other
    settings.
    """
    try:
        run = build_run(cfg, output_dir)
        return train_steps(run)
    finally:
        release_accelerator_state()


@dataclass
class Run:
    """A built run: what :func:`train_steps` loops over, and nothing it has to construct."""

    cfg: DictConfig
    settings: TrainerSettings
    output_dir: Path
    accelerator: Any
    model: torch.nn.Module  # prepared (possibly wrapped) for the backward pass
    embedder: Any  # the unwrapped DecoderEmbedder
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss: ContrastiveLoss
    data: TrainingData
    sides: tuple[str, str]
    metrics_file: MetricsFile
    run_config: str
    start_step: int = 0
    checkpoint: Path | None = None
    prefix_dims: tuple[int, ...] = ()
    evaluator: TrainingEvaluator | None = None  # trainer.eval_benchmarks, on the main process
    best: BestCheckpoint | None = None  # trainer.best_metric, on the main process


def build_run(cfg: DictConfig, output_dir: Path) -> Run:
    """Build the accelerator, model, data, optimizer, scheduler and loss, and resume if asked.

    Creates the ``Accelerator`` here and nowhere else.
    """
    import hydra
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, set_seed
    from transformers import get_scheduler

    settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
    log_with, wandb_kwargs = tracker_settings(cfg.logging.backend, cfg.logging.mode)
    remove_leftovers(output_dir)
    resume_from = find_resume_checkpoint(output_dir, cfg.get("resume"))
    accelerator = Accelerator(
        mixed_precision=settings.resolved_mixed_precision(), log_with=log_with, project_dir=str(output_dir)
    )
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

    with accelerator.main_process_first():  # the first load may convert the offline model (or data) into a cache
        model = hydra.utils.instantiate(
            cfg.model, sides=OmegaConf.to_container(tower.sides), shared_weights=tower.shared_weights,
            **lora_in_top_layers(cfg.model, settings.train_top_layers),
        )  # fmt: skip
        data_config, data_options = split_data_config(cfg.data)
        dataset = hydra.utils.instantiate(data_config)
    tokenization = Tokenization(
        model.tokenizer, model.sides[x_side], model.sides[y_side], settings.max_length, model.padding_side
    )
    data = build_training_data(
        dataset, tokenization, seed=cfg.seed, steps=settings.steps, batch_size=settings.batch_size,
        accum_steps=settings.grad_accum_steps, rank=rank, world_size=world, val_pairs=settings.val_pairs,
        num_workers=settings.num_workers, prefetch_factor=settings.prefetch_factor,
        pin_memory=accelerator.device.type == "cuda", num_negatives=int(data_options.get("num_negatives", 0)),
    )  # fmt: skip

    backbones = list(model.backbone_folders().values())
    if settings.train_top_layers and model.lora is None:  # with LoRA: adapters in those blocks (lora_in_top_layers)
        train_only_top_layers(backbones, settings.train_top_layers)
    if settings.compile:
        for backbone in backbones:  # in place: parameter names (and so checkpoints) stay those of the eager model
            backbone.compile(dynamic=True)
    optimizer = adamw(parameter_groups(model, settings.weight_decay, settings.lr, settings.temperature_lr), settings)
    # Stepped by hand once per optimizer step (accelerate's wrapper would step it once per process).
    scheduler = get_scheduler(
        settings.scheduler, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=settings.steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)  # the scheduler is saved as JSON, not pickled
    embedder = accelerator.unwrap_model(model)
    if embedder.lora is not None:
        keep_only_trainable_state(accelerator)
    matryoshka = Matryoshka.from_settings(settings.matryoshka_dims, settings.matryoshka_weights, embedder.embedding_dim)
    if matryoshka is not None:
        embedder.matryoshka_dims = sorted(matryoshka.dims)  # recorded in every checkpoint's config

    metrics_file = MetricsFile(output_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    start_step = 0
    if resume_from is not None:
        refuse_pickled_state(resume_from)
        check_resume_base(resume_from, embedder)
        # strict=False: a LoRA checkpoint holds the trainable weights only, checked by keep_only_trainable_state
        accelerator.load_state(str(resume_from / TRAINING_STATE_DIR), strict=embedder.lora is None)
        load_scheduler_state(resume_from, scheduler)
        start_step = read_trainer_state(resume_from)["step"]
        data.resume(read_data_state(resume_from, rank))
        metrics_file.truncate_after(start_step)
        if accelerator.is_main_process:
            logger.info("resumed from %s at step %d", resume_from, start_step)
    else:
        metrics_file.truncate_after(-1)  # a run that died before its first checkpoint starts its log again

    if log_with:
        accelerator.init_trackers(
            cfg.logging.project,
            config=OmegaConf.to_container(cfg, resolve=True),
            init_kwargs={"wandb": {**wandb_kwargs, "name": cfg.name, "dir": str(output_dir)}},
        )
    if accelerator.is_main_process:
        total = sum(p.numel() for p in embedder.parameters())
        dtypes = {str(p.dtype).removeprefix("torch.") for p in embedder.parameters()}
        trained = [p for p in embedder.parameters() if p.requires_grad]
        trainable = sum(p.numel() for p in trained)
        trained_low = sorted({str(p.dtype).removeprefix("torch.") for p in trained if p.element_size() < 4})
        if trained_low:
            logger.warning(
                "training weights held in %s directly: AdamW's small updates are mostly lost to rounding "
                "(the offline default with model.dtype=bfloat16 reached held-out top-1 0.65 instead of 0.92); "
                "keep trained weights in float32 and use bfloat16 for frozen ones",
                "/".join(trained_low),
            )
        logger.info(
            "training %s on %s pairs (%s): steps %d..%d x %d pairs (%d processes), %d in-batch negatives per item%s; "
            "%d of %d parameters trainable (weights in %s); mixed precision %s%s",
            cfg.name, "a stream of" if data.train_rows is None else data.train_rows, ", ".join(data.names),
            start_step + 1, settings.steps, data.global_batch, world, settings.batch_size * world - 1,
            f" + up to {data.num_negatives} hard negatives per row (x -> y)" if data.num_negatives else "",
            trainable, total, "/".join(sorted(dtypes)),
            accelerator.mixed_precision,
            " (auto)" if settings.mixed_precision == "auto" else "",
        )  # fmt: skip
        if embedder.lora is not None:
            logger.info(
                "LoRA (%.2f%% of the parameters trainable): %s; base %s, %s, weight sha256 %s...",
                100 * trainable / total, describe_adapters(embedder), embedder.base_identity.pretrained or "random",
                embedder.base_identity.dtype, embedder.base_identity.sha256[:16],
            )  # fmt: skip
    evaluator = best = None
    if accelerator.is_main_process and settings.eval_benchmarks:
        evaluator = TrainingEvaluator(settings.eval_benchmarks, settings.max_length, settings.batch_size, cfg.name)
    if accelerator.is_main_process and settings.best_metric:
        best = BestCheckpoint(output_dir, settings.best_metric, settings.best_mode)
    return Run(
        evaluator=evaluator, best=best,
        cfg=cfg, settings=settings, output_dir=output_dir, accelerator=accelerator, model=model, embedder=embedder,
        optimizer=optimizer, scheduler=scheduler, loss=build_loss(rank, world, matryoshka), data=data,
        sides=(x_side, y_side), metrics_file=metrics_file, run_config=OmegaConf.to_yaml(cfg, resolve=True),
        start_step=start_step, checkpoint=resume_from, prefix_dims=matryoshka.dims if matryoshka else (),
    )  # fmt: skip


class NegativeTally:
    """A step's hard-negative counts across its micro-batches, for the metrics log."""

    def __init__(self) -> None:
        self.counts: list[torch.Tensor] = []
        self.dropped = 0

    def add(self, micro: dict[str, torch.Tensor]) -> None:
        if "negative_counts" in micro:
            self.counts.append(micro["negative_counts"])
            self.dropped += int(micro.get("negatives_dropped", 0))

    def summary(self, accelerator: Any, cap: int) -> dict[str, float]:
        """Over the global batch: ``negatives_per_row`` (mean), ``rows_short_of_negatives`` (fewer than
        the cap) and ``negatives_equal_positive`` (dropped: the row's own positive); {} without negatives."""
        if not self.counts:
            return {}
        counts = torch.cat(self.counts).to(accelerator.device)
        local = torch.stack([counts.sum(), (counts < cap).sum(), torch.tensor(len(counts)), torch.tensor(self.dropped)])
        total = accelerator.reduce(local.to(accelerator.device), "sum").tolist()
        return {
            "negatives_per_row": total[0] / total[2],
            "rows_short_of_negatives": int(total[1]),
            "negatives_equal_positive": int(total[3]),
        }


def backward_step(run: Run, micro: dict[str, torch.Tensor], last: bool) -> dict[str, torch.Tensor]:
    """Loss and gradients of one micro-batch (accumulated into ``.grad``), plain or GradCache."""
    settings, accelerator = run.settings, run.accelerator
    micro = {key: value.to(accelerator.device, non_blocking=True) for key, value in micro.items()}
    num_x = len(micro["x_keys"])
    sides = [run.sides[0]] * num_x + [run.sides[1]] * (len(micro["input_ids"]) - num_x)  # y's, then negatives
    if settings.gradcache_chunk:
        return gradcache_backward(
            run.model, run.embedder, micro, sides, settings.gradcache_chunk, 1.0 / settings.grad_accum_steps,
            run.loss, no_sync=lambda: accelerator.no_sync(run.model), autocast=accelerator.autocast, sync_last=last,
            backward=accelerator.backward, pack_tokens=settings.pack_tokens,
        )  # fmt: skip
    with accelerator.no_sync(run.model) if not last else nullcontext(), accelerator.autocast():
        embeddings = run.model(
            micro["input_ids"], micro["attention_mask"], sides, pack_tokens=settings.pack_tokens
        )  # (2B + M, D)
        out = run.loss(*loss_inputs(embeddings, micro, run.embedder.logit_scale()))
        accelerator.backward(out["loss"] / settings.grad_accum_steps)
    return {key: value.detach() for key, value in out.items()}


def train_steps(run: Run) -> dict[str, Any]:
    """The step loop: micro-batches -> backward_step -> optimizer step, logging, validation, checkpoints."""
    from tqdm.auto import tqdm

    settings, accelerator, world = run.settings, run.accelerator, run.accelerator.num_processes
    validate = partial(_validate, run)
    progress = tqdm(
        total=settings.steps, initial=run.start_step, desc="train", disable=not accelerator.is_local_main_process
    )
    record: dict[str, Any] = {}
    first_validation = validate(0) if run.start_step == 0 else {}
    run.model.train()
    started = time.perf_counter()
    for step, micro_batches in enumerate(run.data.steps(run.start_step, settings.steps), start=run.start_step):
        sums: dict[str, torch.Tensor] = {}
        tokens = torch.zeros((), device=accelerator.device)
        negatives = NegativeTally()
        for index, micro in enumerate(micro_batches):
            tokens += micro["attention_mask"].sum().to(accelerator.device)
            negatives.add(micro)
            out = backward_step(run, micro, last=index == len(micro_batches) - 1)
            for key in ("loss", "accuracy", *(k for k in out if k.startswith("loss@"))):
                sums[key] = sums.get(key, 0) + out[key]
        means = {key: accelerator.reduce(total / len(micro_batches), "mean").item() for key, total in sums.items()}
        means.update(negatives.summary(accelerator, run.data.num_negatives))
        if not math.isfinite(means["loss"]):
            raise NonFiniteLossError(
                f"loss is {means['loss']} at step {step + 1}; stopped before the weights were updated "
                f"(last good checkpoint: {run.checkpoint or 'none'}). "
                "Lower trainer.lr, raise model.min_temperature, or check the data for empty texts."
            )
        grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), settings.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)

        seconds = time.perf_counter() - started
        started = time.perf_counter()
        record = {
            "step": step + 1,
            **({} if run.data.train_rows is None else {"epoch": run.data.epoch_of(step + 1)}),
            "samples_seen": (step + 1) * run.data.global_batch,
            **means,
            "temperature": 1.0 / run.embedder.logit_scale().item(),
            "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "pairs_per_s": run.data.global_batch / seconds,
            "tokens_per_s": accelerator.reduce(tokens, "sum").item() / seconds,
        }
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            run.metrics_file.write(record)
            accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"}, step=step + 1)
        progress.set_postfix(
            loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}", T=f"{record['temperature']:.3f}"
        )
        progress.update()
        if settings.eval_every and (step + 1) % settings.eval_every == 0 and step + 1 != settings.steps:
            validate(step + 1)
        periodic = settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0
        if periodic or step + 1 == settings.steps:
            state = {
                "step": step + 1,
                "samples_seen": (step + 1) * run.data.global_batch,
                "processes": world,
                "global_batch": run.data.global_batch,
                "metrics": record,
            }
            run.checkpoint = save_checkpoint(
                accelerator, run.model, run.embedder, run.output_dir, step + 1, state, run.run_config,
                settings.keep_checkpoints, data_state=run.data.state(), scheduler=run.scheduler,
            )  # fmt: skip
        started = time.perf_counter()  # validation and checkpoints are not step time
    progress.close()
    last_validation = validate(settings.steps) if run.start_step < settings.steps else {}
    if accelerator.is_main_process and first_validation and last_validation:
        logger.info(
            "held-out %d pairs: loss %.4f -> %.4f, in-batch accuracy %.3f -> %.3f",
            len(run.data.validation[0]), first_validation["val_loss"], last_validation["val_loss"],
            first_validation["val_accuracy"], last_validation["val_accuracy"],
        )  # fmt: skip
    accelerator.end_training()
    if world > 1:
        time.sleep(1.0)  # gloo's process-group teardown can hang at exit without a pause (torch 2.13)
    return {
        "metrics": record,
        "validation": {"start": first_validation, "end": last_validation},
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "output_dir": str(run.output_dir),
    }


def _validate(run: Run, step: int) -> dict[str, float]:
    """Held-out loss/accuracy (every process), the training-time benchmarks and the best checkpoint (main)."""
    xs, ys = run.data.validation
    scores = {}
    if xs:
        scores = validation_metrics(
            run.embedder, xs, ys, run.sides, run.settings.max_length, run.settings.batch_size, run.prefix_dims
        )
    benchmarks = run.evaluator.evaluate(run.embedder, step) if run.evaluator is not None else {}
    if scores or benchmarks:
        run.metrics_file.write({"step": step, **scores, **benchmarks})
        logged = {f"val/{key.removeprefix('val_')}": value for key, value in scores.items()}
        run.accelerator.log({**logged, **benchmarks}, step=step)
    if run.best is not None:
        run.best.offer({**scores, **benchmarks}, step, run.embedder, run.run_config)
    if run.settings.eval_benchmarks or run.settings.best_metric:
        run.accelerator.wait_for_everyone()  # the other processes wait for the main one's benchmarks
    return scores


def split_validation(pairs: Sequence[Pair], count: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out ``count`` pairs (chosen with ``seed``, as a run does) for validation; the rest is for training."""
    held = HeldOut(len(pairs), count, seed).held.tolist()
    chosen = set(held)
    return [p for i, p in enumerate(pairs) if i not in chosen], [pairs[i] for i in held]


@torch.no_grad()
def validation_metrics(
    embedder: Any,
    xs: Sequence[str],
    ys: Sequence[str],
    sides: tuple[str, str],
    max_length: int,
    batch_size: int,
    prefix_dims: Sequence[int] = (),
) -> dict[str, float]:
    """Loss and top-1 accuracy over the held-out pairs as ONE batch (every other pair a negative),
    so values are comparable across steps; run identically on every process. For each of
    ``prefix_dims`` (Matryoshka sizes) also the accuracy of the re-normalised prefix."""
    x = embedder.encode(list(xs), sides[0], batch_size=batch_size, max_length=max_length)
    y = embedder.encode(list(ys), sides[1], batch_size=batch_size, max_length=max_length)
    scale = embedder.logit_scale().detach().float().cpu()
    loss = InfoNCE()
    out = loss(x, y, scale)
    scores = {"val_loss": out["contrastive_loss"].item(), "val_accuracy": out["accuracy"].item()}
    for dim in prefix_dims:
        if dim < x.shape[1]:
            prefix = loss(truncate_embeddings(x, dim), truncate_embeddings(y, dim), scale)
            scores[f"val_accuracy@{dim}"] = prefix["accuracy"].item()
    return scores

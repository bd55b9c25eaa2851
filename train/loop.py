"""The step loop: micro-batches -> embeddings -> the loss -> AdamW step, on a run built by :mod:`train.build`.

:func:`train_steps` only steps: each micro-batch's loss and gradients come from :func:`backward_step`
whatever the path (plain or GradCache), then one optimizer step, the step's record, and the
validation and checkpoints the settings ask for. Everything it uses was built beforehand.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from typing import Any

import torch

from train.build import Run
from train.distributed import full_tensor
from train.gradcache import gradcache_backward
from train.losses import loss_inputs

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops before the weights are touched."""


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


def optimizer_step(run: Run, step: int, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """One optimizer step over this process's micro-batches; returns the step's means across processes."""
    accelerator = run.accelerator
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
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), run.settings.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    means["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    means["tokens"] = accelerator.reduce(tokens, "sum").item()
    return means


def step_record(run: Run, step: int, means: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The metrics line of optimizer step ``step`` (0-based)."""
    tokens = means.pop("tokens")
    return {
        "step": step + 1,
        **({} if run.data.train_rows is None else {"epoch": run.data.epoch_of(step + 1)}),
        "samples_seen": (step + 1) * run.data.global_batch,
        **means,
        **run.data.mixture_rows(step + 1),  # rows each source of a mixture gave so far: its weights, audited
        "temperature": 1.0 / full_tensor(run.embedder.logit_scale()).item(),
        "lr": run.scheduler.get_last_lr()[0],
        "pairs_per_s": run.data.global_batch / seconds,
        "tokens_per_s": tokens / seconds,
    }


def train_steps(run: Run) -> dict[str, Any]:
    """The step loop: optimizer steps, their log, validation and checkpoints; returns the final metrics."""
    from tqdm.auto import tqdm

    settings, accelerator = run.settings, run.accelerator
    progress = tqdm(total=settings.steps, initial=run.start_step, desc="train",
                    disable=not accelerator.is_local_main_process)  # fmt: skip
    record: dict[str, Any] = {}
    first_validation = run.validator(run.embedder, 0) if run.start_step == 0 else {}
    run.model.train()
    started = time.perf_counter()
    for step, micro_batches in enumerate(run.data.steps(run.start_step, settings.steps), start=run.start_step):
        means = optimizer_step(run, step, micro_batches)
        record = step_record(run, step, means, time.perf_counter() - started)
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            run.metrics_file.write(record)
            accelerator.log({f"train/{key}": value for key, value in record.items() if key != "step"}, step=step + 1)
        progress.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.2f}",
                             T=f"{record['temperature']:.3f}")  # fmt: skip
        progress.update()
        if settings.eval_every and (step + 1) % settings.eval_every == 0 and step + 1 != settings.steps:
            run.validator(run.embedder, step + 1)
        if (settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0) or step + 1 == settings.steps:
            run.checkpoint = run.checkpointer.save(step + 1, trainer_state(run, step, record), run.data.state())
        started = time.perf_counter()  # validation and checkpoints are not step time
    progress.close()
    last_validation = run.validator(run.embedder, settings.steps) if run.start_step < settings.steps else {}
    return finish(run, record, first_validation, last_validation)


def trainer_state(run: Run, step: int, record: dict[str, Any]) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint after optimizer step ``step`` (0-based)."""
    return {
        "step": step + 1,
        "samples_seen": (step + 1) * run.data.global_batch,
        "processes": run.accelerator.num_processes,
        "global_batch": run.data.global_batch,
        "metrics": record,
    }


def finish(run: Run, record: dict[str, Any], first: dict[str, float], last: dict[str, float]) -> dict[str, Any]:
    """Log the held-out change, end the trackers; the run's result."""
    accelerator = run.accelerator
    peaks = peak_rss_per_process(accelerator)
    if accelerator.is_main_process:
        logger.info("peak RSS per process: %s MiB", " / ".join(f"{peak:.0f}" for peak in peaks))
    if accelerator.is_main_process and first and last:
        logger.info(
            "held-out %d pairs: loss %.4f -> %.4f, in-batch accuracy %.3f -> %.3f",
            len(run.data.validation[0]), first["val_loss"], last["val_loss"], first["val_accuracy"],
            last["val_accuracy"],
        )  # fmt: skip
    accelerator.end_training()
    if accelerator.num_processes > 1:
        time.sleep(1.0)  # gloo's process-group teardown can hang at exit without a pause (torch 2.13)
    return {
        "metrics": record,
        "validation": {"start": first, "end": last},
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "output_dir": str(run.output_dir),
        "peak_rss_mib": peaks,
    }


def peak_rss_per_process(accelerator: Any) -> list[float]:
    """Every process's peak resident memory so far (MiB), in rank order."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return accelerator.gather(torch.tensor([peak], device=accelerator.device)).tolist()

"""Full fine-tuning vs the top blocks vs LoRA: parameters, memory, speed, checkpoint size, quality.

Each (model, method) pair trains in a fresh process on the offline default's data (STS-B/MRPC
paraphrase pairs, 128 held out), with the same seed, steps, batch and sequence length, and reports:
trainable and total parameters; the optimizer state's size (AdamW's two moments, summed over the
optimizer's tensors after training); peak RSS (``VmHWM``); median seconds per step (first step left
out) with min-max; the final checkpoint's size on disk (inference part: full backbone or adapter;
and ``training_state/``); and the held-out loss / in-batch top-1 at the start and the end.

Methods: ``full`` (every weight), ``top6`` (the cpu recipe: top 6 blocks + final norm, embeddings
frozen), ``lora8`` / ``lora32`` (LoRA r=8 / r=32, alpha 2r, every linear layer of attention and MLP
in every block, the delimiter rows trained; ``--lora-lr``, since adapters starting at B = 0 need a
larger step than full fine-tuning's), ``lora8-top6`` (LoRA in the top 6 blocks only, delimiter rows
frozen). Precision: ``trainer.mixed_precision=auto`` as the recipe (bf16 only where native).

Usage:
    python benchmarks/finetune_methods.py                                   # SmolLM2-135M and Gemma-3-270M
    python benchmarks/finetune_methods.py --models smollm2-135m --methods full lora8 --steps 20
    python benchmarks/finetune_methods.py --table-from runs/finetune_methods.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from train_throughput import compose, load_average, model_overrides, peak_rss_mib  # noqa: E402

METHODS: dict[str, tuple[str, ...]] = {
    "full": ("trainer.train_top_layers=null",),
    "top6": ("trainer.train_top_layers=6",),
    "lora8": ("trainer.train_top_layers=null", "model.lora.r=8"),
    "lora32": ("trainer.train_top_layers=null", "model.lora.r=32"),
    "lora8-top6": ("trainer.train_top_layers=6", "model.lora.r=8"),
}


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure_one(model: str, method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train one (model, method) in this process; return its row."""
    import torch

    from train.build import build_run
    from train.launch import release_accelerator_state
    from train.loop import train_steps

    overrides = [*model_overrides(model), "logging=none", f"trainer.steps={args.steps}", "trainer.eval_every=0",
                 f"trainer.batch_size={args.batch}", f"trainer.max_length={args.max_length}", f"seed={args.seed}",
                 f"data_dir={args.data_dir}", *METHODS[method]]  # fmt: skip
    if method.startswith("lora"):
        overrides.append(f"trainer.lr={args.lora_lr}")
    output = work / f"{model}-{method}"
    cfg = compose(overrides, output)
    run = None
    try:
        run = build_run(cfg, output)
        parameters = list(run.embedder.parameters())
        trainable = sum(p.numel() for p in parameters if p.requires_grad)
        total = sum(p.numel() for p in parameters)
        result = train_steps(run)
        precision = run.accelerator.mixed_precision
        optimizer_bytes = sum(
            value.numel() * value.element_size()
            for state in run.optimizer.state.values()
            for value in state.values()
            if torch.is_tensor(value)
        )
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        release_accelerator_state()
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["samples_seen"] / r["step"] / r["pairs_per_s"] for r in records if "pairs_per_s" in r][1:]
    checkpoint = Path(result["checkpoint"])
    state_dir = checkpoint / "training_state"
    return {
        "model": model,
        "method": method,
        "lr": float(cfg.trainer.lr),
        "mixed_precision": precision,
        "trainable": trainable,
        "total": total,
        "optimizer_mib": optimizer_bytes / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "seconds_per_step": statistics.median(seconds),
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "checkpoint_mib": folder_mib(checkpoint) - folder_mib(state_dir),
        "training_state_mib": folder_mib(state_dir),
        "val_start": result["validation"]["start"],
        "val_end": result["validation"]["end"],
    }


def print_table(report: dict[str, Any]) -> None:
    shape = f"{report['steps']} steps x {report['batch']} pairs, {report['max_length']} tokens, seed {report['seed']}"
    load = f"load average before {report['load_before']}, after {report['load_after']}"
    print(f"\n{report['command']}\n{load}; {shape}\n")
    header = ("| model | method | lr | trainable | of total | optimizer state MiB | peak RSS MiB | s/step (min-max) "
              "| checkpoint MiB (+ training state) | held-out loss start -> end | top-1 start -> end |")  # fmt: skip
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in report["rows"]:
        start, end = row["val_start"], row["val_end"]
        precision = "" if row["mixed_precision"] == "no" else " bf16"
        print(
            f"| {row['model']} | {row['method']} | {row['lr']:g}{precision} | {row['trainable'] / 1e6:.2f}M | "
            f"{100 * row['trainable'] / row['total']:.1f}% | {row['optimizer_mib']:.0f} | {row['peak_rss_mib']:.0f} | "
            f"{row['seconds_per_step']:.2f} ({row['seconds_min']:.2f}-{row['seconds_max']:.2f}) | "
            f"{row['checkpoint_mib']:.1f} (+{row['training_state_mib']:.0f}) | "
            f"{start['val_loss']:.3f} -> {end['val_loss']:.3f} | "
            f"{start['val_accuracy']:.3f} -> {end['val_accuracy']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--methods", nargs="+", default=["full", "top6", "lora8", "lora32"], choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--report", help="write the rows as JSON here")
    parser.add_argument("--table-from", help="print the table of an earlier --report and exit")
    parser.add_argument("--measure-one", nargs=3, metavar=("MODEL", "METHOD", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table_from:
        print_table(json.loads(Path(args.table_from).read_text()))
        return
    if args.measure_one:
        model, method, work = args.measure_one
        print(json.dumps(measure_one(model, method, args, Path(work))))
        return
    report: dict[str, Any] = {
        "command": "python " + " ".join(["benchmarks/finetune_methods.py", *sys.argv[1:]]),
        "load_before": load_average(), "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
        "seed": args.seed, "rows": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="finetune-methods-") as work:
        for model in args.models:
            for method in args.methods:
                command = [sys.executable, __file__, "--measure-one", model, method, work, "--steps", str(args.steps),
                           "--batch", str(args.batch), "--max-length", str(args.max_length), "--seed", str(args.seed),
                           "--lora-lr", str(args.lora_lr), "--data-dir", args.data_dir]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{model} {method} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                top1 = row["val_end"]["val_accuracy"]
                print(f"{model} {method}: {row['seconds_per_step']:.2f} s/step, top-1 {top1:.3f}", flush=True)
                report["rows"].append(row)
                if args.report:
                    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    report["load_after"] = load_average()
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


if __name__ == "__main__":
    main()

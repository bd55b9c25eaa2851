"""One run, launched every way this repository supports: 1 process, DDP, FSDP2 and DeepSpeed ZeRO-2/3.

Each launch trains the same model on the same data, seed and global batch (the multi-process ones
split it over ``--processes`` processes), in its own fresh ``accelerate launch`` and one after the
other. The table gives, per launch: the final loss and its largest per-step gap to the 1-process
run, the largest weight difference to it (the checkpoint's inference folder), the median seconds
per step (first step left out), and each process's peak RSS (from the trainer's own log line).

Usage:
    python benchmarks/scaling.py                                  # SmolLM2-135M, 20 steps of 16 pairs
    python benchmarks/scaling.py --model tiny --steps 6           # a seconds-long check
    python benchmarks/scaling.py --launches one fsdp --steps 40 --json runs/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = REPO_ROOT / "configs" / "accelerate"
LAUNCHES = {
    "one": ("--num_processes", "1", "--mixed_precision", "no"),
    "ddp": ("--config_file", str(ACCELERATE / "ddp_cpu.yaml")),
    "fsdp": ("--config_file", str(ACCELERATE / "fsdp_cpu.yaml")),
    "zero2": ("--config_file", str(ACCELERATE / "zero2_cpu.yaml")),
    "zero3": ("--config_file", str(ACCELERATE / "zero3_cpu.yaml")),
}
MODELS = {
    "smollm2": ["model=smollm2-135m"],
    "tiny": ["model=tiny-random", "trainer=tiny"],
}
PEAK_LINE = re.compile(r"peak RSS per process: ([\d. /]+) MiB")


def train(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    processes = 1 if name == "one" else args.processes
    run = work / name
    overrides = [*MODELS[args.model], "logging=none", f"trainer.steps={args.steps}", "trainer.eval_every=0",
                 f"trainer.batch_size={args.batch // processes}", "trainer.mixed_precision=no", "trainer.val_pairs=0",
                 f"seed={args.seed}", f"hydra.run.dir={run}", *args.overrides]  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCHES[name], "train/contrastive.py", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return {"launch": name, "error": (result.stdout + result.stderr)[-2000:]}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    seconds = [r["samples_seen"] / r["step"] / r["pairs_per_s"] for r in steps][1:]
    peaks = PEAK_LINE.search(result.stdout + result.stderr)
    return {
        "launch": name,
        "processes": processes,
        "losses": [r["loss"] for r in steps],
        "seconds_per_step": statistics.median(seconds) if seconds else None,
        "peak_rss_mib": [float(v) for v in peaks.group(1).split(" / ")] if peaks else [],
        "wall_s": time.perf_counter() - started,
        "checkpoint": str(run / "checkpoints" / f"step-{args.steps:06d}"),
    }


def weight_gap(checkpoint: str, reference: str) -> float:
    """Largest absolute difference between two checkpoints' inference weights."""
    from safetensors.torch import load_file

    gap = 0.0
    for file in Path(reference).glob("*/*.safetensors"):
        if file.parent.name == "training_state":
            continue
        mine = load_file(str(Path(checkpoint) / file.parent.name / file.name))
        for key, value in load_file(str(file)).items():
            gap = max(gap, (mine[key] - value).abs().max().item())
    return gap


def table(rows: list[dict[str, Any]]) -> str:
    reference = rows[0]
    if "error" in reference:
        return f"the 1-process reference failed:\n{reference['error']}"
    lines = ["| launch | processes | final loss | max loss gap to 1 process | max weight gap | s/step | x 1 process "
             "| peak RSS per process (MiB) |", "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['launch']} | failed: {row['error'].splitlines()[-1][:80]} |")
            continue
        loss_gap = max(abs(a - b) for a, b in zip(row["losses"], reference["losses"], strict=True))
        lines.append(
            f"| {row['launch']} | {row['processes']} | {row['losses'][-1]:.6f} | {loss_gap:.1e} "
            f"| {weight_gap(row['checkpoint'], reference['checkpoint']):.1e} | {row['seconds_per_step']:.3f} "
            f"| {row['seconds_per_step'] / reference['seconds_per_step']:.2f} "
            f"| {' / '.join(f'{peak:.0f}' for peak in row['peak_rss_mib'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    parser.add_argument("--launches", nargs="+", choices=list(LAUNCHES), default=list(LAUNCHES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="global batch (pairs per step over all processes)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for every launch")
    args = parser.parse_args()
    launches = ["one", *(name for name in args.launches if name != "one")]
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpt-scaling-") as folder:
        rows = []
        for name in launches:
            rows.append(train(name, args, Path(folder)))
            print(f"{name}: {rows[-1].get('wall_s', 0):.0f} s", flush=True)
        print(f"load average after: {os.getloadavg()}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        print(table(rows))


if __name__ == "__main__":
    main()

"""The recipe study (docs/recipes.md): train variants of a tower one at a time, score each on a dev set, tabulate.

    python scripts/study.py --plan configs/study/similarity.yaml --runs b16-st250 --seeds 0 1 2
    python scripts/study.py --plan configs/study/similarity.yaml --runs b16-st250 --test   # also the test benchmark
    python scripts/study.py --plan configs/study/similarity.yaml --table                 # markdown table of what exists
    python scripts/study.py --plan configs/study/similarity.yaml --dry-run --runs b16-st250

A plan (``configs/study/<tower>.yaml``) names the experiment every run starts from, the ``eval/run.py``
overrides of its dev and test benchmarks, and the runs: each a list of training overrides, the
seeds it is run with and optionally ``init: <run>-s<seed>`` (start from that run's final weights).
Each (run, seed) trains with ``accelerate launch train/contrastive.py`` under ``nice -n 10`` and
``/usr/bin/time -v`` into ``runs_dir/<run>-s<seed>/``, then is scored with ``eval/run.py`` (the
harness ``scripts/towers.py`` also drives) into ``output_dir/<run>-s<seed>/``. Every finished step
leaves a file, so a re-run continues where it stopped; runs go one at a time because the study's
CPU is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from omegaconf import DictConfig, OmegaConf  # noqa: E402
from towers import run_logged, write_atomic  # noqa: E402

TRAIN_LAUNCH = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "train/contrastive.py"]  # fmt: skip


@dataclass
class Job:
    """One (run, seed) of a plan: where it trains, where its scores go, and its training command."""

    run: str
    seed: int
    overrides: list[str]
    run_dir: Path
    report_dir: Path

    @property
    def label(self) -> str:
        return f"{self.run}-s{self.seed}"

    @property
    def train_record(self) -> Path:
        return self.report_dir / "train.json"


def load_plan(path: Path) -> DictConfig:
    plan = OmegaConf.load(path)
    for key in ("tower", "base", "runs_dir", "output_dir", "dev", "dev_key", "runs"):
        if key not in plan:
            raise ValueError(f"{path}: missing key {key!r}")
    for name, run in plan.runs.items():
        if "overrides" not in run:
            raise ValueError(f"{path}: run {name!r} has no overrides list")
    return plan


def jobs(plan: DictConfig, runs: list[str] | None, seeds: list[int] | None) -> list[Job]:
    unknown = sorted(set(runs or []) - set(plan.runs))
    if unknown:
        raise ValueError(f"unknown runs {unknown}; the plan has {sorted(plan.runs)}")
    out = []
    for name, run in plan.runs.items():
        if runs and name not in runs:
            continue
        for seed in seeds if seeds is not None else list(run.get("seeds", [0])):
            label = f"{name}-s{seed}"
            out.append(Job(name, int(seed), [*plan.base, *run.overrides], ROOT / plan.runs_dir / label,
                           ROOT / plan.output_dir / label))  # fmt: skip
    return out


def final_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step checkpoint of a run (``checkpoints/step-NNNNNN``), or None."""
    found = sorted((run_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_average() -> float:
    return os.getloadavg()[0]


def parse_time_v(path: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) from ``/usr/bin/time -v``'s report."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    seconds = 0.0
    if wall:
        for part in wall.group(1).split(":"):
            seconds = seconds * 60 + float(part)
    return {"wall_s": round(seconds, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024) if rss else None}


def held_out(run_dir: Path) -> dict[str, Any]:
    """Held-out loss/top-1 at the first and last validation of ``metrics.jsonl``, and the last step's speed."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vals = [line for line in lines if "val_loss" in line]
    steps = [line for line in lines if "loss" in line]
    out: dict[str, Any] = {}
    if vals:
        out.update(val_loss_start=vals[0]["val_loss"], val_loss_end=vals[-1]["val_loss"],
                   val_acc_start=vals[0]["val_accuracy"], val_acc_end=vals[-1]["val_accuracy"])  # fmt: skip
    if steps:
        tail = steps[len(steps) // 2 :]
        out["pairs_per_s"] = round(statistics.median(s["pairs_per_s"] for s in tail), 2)
        out["steps"] = steps[-1]["step"]
        out["samples_seen"] = steps[-1]["samples_seen"]
    return out


def init_folder(plan: DictConfig, label: str, dry_run: bool) -> Path:
    """A decoder folder made of another study run's final checkpoint (its ``backbone/`` and ``tokenizer/``
    files, linked), to start a run from with ``model.pretrained=FOLDER``: continued training, e.g.
    supervised pairs after cpt's text-neighbors objective. The tower's delimiters are already in its
    vocabulary, so they keep their trained embeddings; the temperature starts afresh."""
    source = final_checkpoint(ROOT / plan.runs_dir / label)
    target = ROOT / plan.runs_dir / f"init-{label}"
    if target.is_dir() or dry_run:
        return target
    if source is None or not (source / "backbone" / "config.json").is_file():
        raise FileNotFoundError(f"run {label!r} has no full-weight checkpoint under {ROOT / plan.runs_dir / label}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for folder in ("backbone", "tokenizer"):
        for file in (source / folder).iterdir():
            (partial / file.name).symlink_to(file.resolve())
    partial.rename(target)
    return target


def train(plan: DictConfig, job: Job, dry_run: bool) -> None:
    if job.train_record.is_file():
        return
    init = plan.runs[job.run].get("init")
    if init:
        job.overrides.append(f"model.pretrained={init_folder(plan, init, dry_run)}")
    command = [*TRAIN_LAUNCH, *job.overrides, f"seed={job.seed}", "logging=none", "resume=auto",
               f"hydra.run.dir={job.run_dir}"]  # fmt: skip
    timed = ["nice", "-n", "10", "/usr/bin/time", "-v", "-o", str(job.run_dir / "time.txt"), *command]
    if not dry_run:
        job.run_dir.mkdir(parents=True, exist_ok=True)
    before = load_average()
    run_logged(timed, job.run_dir / "study-train.log", dry_run)
    if dry_run:
        return
    record = {"command": " ".join(command), "seed": job.seed, "load_before": before, "load_after": load_average(),
              "finished": time.strftime("%Y-%m-%d %H:%M"), **parse_time_v(job.run_dir / "time.txt"),
              **held_out(job.run_dir), "checkpoint": str(final_checkpoint(job.run_dir))}  # fmt: skip
    write_atomic(job.train_record, json.dumps(record, indent=1) + "\n")
    for state in (job.run_dir / "checkpoints").glob("step-*/training_state"):
        shutil.rmtree(state)  # optimizer moments (~0.7-1.5 GB a run): a finished study run is never resumed


def evaluate(plan: DictConfig, job: Job, which: str, dry_run: bool) -> None:
    """Score the run's final checkpoint with ``eval/run.py`` on the plan's ``dev`` or ``test`` overrides."""
    folder = job.report_dir / which
    if (folder / "results.json").is_file():
        return
    checkpoint = final_checkpoint(job.run_dir) if not dry_run else job.run_dir / "checkpoints" / "step-LAST"
    own = {override.split("=", 1)[0] for override in plan[which]}  # the benchmark's own source.* values win
    general = [o for o in plan.get("checkpoint_overrides", []) if o.split("=", 1)[0] not in own]
    command = [sys.executable, "eval/run.py", *plan[which], "source=checkpoint", f"source.checkpoint_dir={checkpoint}",
               f"source.name={plan.tower}-{job.label}", *general, "reference_model=null", "show_progress=false",
               "plot=false", "mteb_results=false", f"output_dir={folder}"]  # fmt: skip
    run_logged(["nice", "-n", "10", *command], folder / "run.log", dry_run)


def scores(job: Job, which: str) -> dict[str, float]:
    path = job.report_dir / which / "results.json"
    return json.loads(path.read_text())["scores"] if path.is_file() else {}


def summary_rows(plan: DictConfig, all_jobs: list[Job]) -> list[str]:
    """Markdown rows, one per run: each seed's dev score, their mean and spread, held-out top-1, wall."""
    test_keys = list(plan.get("test_keys", []))
    header = ["run", "overrides", "seeds", "dev (per seed)", "dev mean", "dev spread (max-min)",
              *[f"test {k}" for k in test_keys], "held-out top-1 end", "wall min (mean)",
              "load before/after"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in plan.runs.items():
        done = [j for j in all_jobs if j.run == name and scores(j, "dev")]
        if not done:
            continue
        dev = [scores(j, "dev")[plan.dev_key] for j in done]
        trains = [json.loads(j.train_record.read_text()) for j in done if j.train_record.is_file()]
        tests = {k: [scores(j, "test")[k] for j in done if k in scores(j, "test")] for k in test_keys}
        cells = [
            name, "`" + " ".join(run.overrides) + "`", ",".join(str(j.seed) for j in done),
            " / ".join(f"{v:.2f}" for v in dev), f"{statistics.mean(dev):.2f}",
            f"{max(dev) - min(dev):.2f}" if len(dev) > 1 else "–",
            *[" / ".join(f"{v:.2f}" for v in tests[k]) or "–" for k in test_keys],
            " / ".join(f"{t.get('val_acc_end', float('nan')):.3f}" for t in trains),
            f"{statistics.mean(t['wall_s'] for t in trains) / 60:.1f}" if trains else "–",
            " ; ".join(f"{t['load_before']:.1f}/{t['load_after']:.1f}" for t in trains),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--runs", nargs="*", help="only these runs (names in the plan)")
    parser.add_argument("--seeds", nargs="*", type=int, help="these seeds instead of each run's own")
    parser.add_argument("--test", action="store_true", help="also score the plan's test benchmark")
    parser.add_argument("--no-dev", action="store_true", help="skip the dev benchmark")
    parser.add_argument("--table", action="store_true", help="only print the table of what exists")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    selected = jobs(plan, args.runs, args.seeds)
    if not args.table:
        for job in selected:
            train(plan, job, args.dry_run)
            if not args.no_dev:
                evaluate(plan, job, "dev", args.dry_run)
            if args.test:
                evaluate(plan, job, "test", args.dry_run)
    print("\n".join(summary_rows(plan, jobs(plan, None, None) if args.table else selected)))


if __name__ == "__main__":
    main()

"""Reproduce the end-to-end towers table: train each tower, evaluate every row, write the report.

    python scripts/towers.py                    # everything; finished steps are skipped
    python scripts/towers.py --dry-run          # print the commands only
    python scripts/towers.py --report-only      # rebuild report.md from the results on disk
    python scripts/towers.py --rows untrained similarity --benchmarks sts

The plan lives in ``configs/towers.yaml``: which experiment trains each tower, which rows
(untrained decoder, trained towers, baselines) are scored on which benchmarks, and the
``eval/run.py`` overrides. Training and evaluation run as the README's own commands, in
subprocesses, so this script only orchestrates: each finished step leaves a file on disk (a
final checkpoint, a ``results.json``) and a re-run picks up where the last one stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from omegaconf import DictConfig, OmegaConf  # noqa: E402

from serve.process import ServerProcess, free_port  # noqa: E402

COLUMN_KEYS = {
    "senteval": [f"senteval/{task}/accuracy" for task in ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")]
    + ["senteval/MRPC/f1", "senteval/average/accuracy", "senteval/average_subset/accuracy"],
    "sts": ["sts/STSBenchmark/spearman", "sts/SICK-R/spearman"],
    "arguana": ["beir/arguana/ndcg@10"],
    "codesearchnet": [f"codesearchnet/{lang}/mrr" for lang in ("go", "java", "javascript", "php", "python", "ruby")]
    + ["codesearchnet/average/mrr"],
}


# untrained: the decoder with a tower's delimiters; trained: a tower's final checkpoint; served: that
# checkpoint exported and behind `python -m serve`, scored over HTTP; source: any eval/run.py source.
ROW_KINDS = ("untrained", "trained", "served", "source")


@dataclass
class Evaluation:
    """One ``eval/run.py`` call: a row scored on a benchmark."""

    row: str
    benchmark: str
    overrides: list[str]
    output_dir: Path
    needs: list[str] = field(default_factory=list)  # towers whose checkpoint must exist first
    served: str | None = None  # the tower to export and serve for this call (its URL is appended)

    @property
    def results(self) -> Path:
        return self.output_dir / "results.json"


def load_plan(path: Path) -> DictConfig:
    plan = OmegaConf.load(path)
    for key in ("output_dir", "runs_dir", "towers", "benchmarks", "rows", "own_benchmarks"):
        if key not in plan:
            raise ValueError(f"{path}: missing key {key!r}")
    for row in plan.rows:
        kinds = [k for k in ROW_KINDS if k in row]
        if len(kinds) != 1:
            raise ValueError(f"{path}: row {row.get('name')!r} needs exactly one of {'/'.join(ROW_KINDS)}")
        benchmarks = list(row.get(kinds[0]) if kinds[0] != "source" else row.get("benchmarks", []))
        unknown = [b for b in benchmarks if b not in plan.benchmarks]
        if unknown:
            raise ValueError(f"{path}: row {row.name!r} names unknown benchmarks {unknown}")
    return plan


def run_name(experiment: str) -> str:
    """The run name an experiment config sets (``name:``), read without composing Hydra."""
    config = OmegaConf.load(ROOT / "configs" / "experiment" / f"{experiment}.yaml")
    if "name" in config:
        return str(config.name)
    parents = [d for d in config.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    if parents:
        return run_name(parents[0])
    raise ValueError(f"configs/experiment/{experiment}.yaml sets no name")


def experiment_steps(experiment: str) -> int:
    """Training steps of an experiment (its trainer group's ``steps`` unless it overrides them)."""
    config = OmegaConf.load(ROOT / "configs" / "experiment" / f"{experiment}.yaml")
    if "trainer" in config and "steps" in config.trainer:
        return int(config.trainer.steps)
    parents = [d for d in config.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    if parents:
        return experiment_steps(parents[0])
    defaults = [d for d in config.get("defaults", []) if not isinstance(d, str)]
    trainer = next((d["override /trainer"] for d in defaults if "override /trainer" in d), "cpu")
    return int(OmegaConf.load(ROOT / "configs" / "trainer" / f"{trainer}.yaml").steps)


def final_checkpoint(plan: DictConfig, tower: str) -> Path:
    experiment = plan.towers[tower]
    return ROOT / plan.runs_dir / run_name(experiment) / "checkpoints" / f"step-{experiment_steps(experiment):06d}"


def untrained_checkpoint(plan: DictConfig, tower: str) -> Path:
    return ROOT / plan.runs_dir / f"untrained-{run_name(plan.towers[tower])}" / "checkpoint"


def build_untrained(plan: DictConfig, tower: str) -> Path:
    """Save the experiment's model as built before training: the pretrained decoder plus the tower's delimiters."""
    target = untrained_checkpoint(plan, tower)
    if (target / "embedder_config.json").is_file():
        return target
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={plan.towers[tower]}"])
    sides = OmegaConf.to_container(cfg.tower.sides)
    model = instantiate(cfg.model, sides=sides, shared_weights=cfg.tower.shared_weights)
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    partial.rename(target)
    return target


def evaluations(plan: DictConfig, rows: list[str] | None, benchmarks: list[str] | None) -> list[Evaluation]:
    """Every (row, benchmark) evaluation of the plan, filtered by ``rows`` / ``benchmarks`` when given."""
    out = []
    for row in plan.rows:
        if rows and row.name not in rows:
            continue
        kind = next(k for k in ROW_KINDS if k in row)
        pairs = [(b, None) for b in row.benchmarks] if kind == "source" else list(row[kind].items())
        for benchmark, tower in pairs:
            if benchmarks and benchmark not in benchmarks:
                continue
            folder = ROOT / plan.output_dir / row.name / benchmark
            if tower is None:
                source = list(row.source)
                needs = []
            elif kind == "served":
                source = ["source=openai", f"source.model={tower}", f"source.name=served-{tower}"]
                role_sides = row.get("role_sides") or {}
                if role_sides:
                    models = ", ".join(f"{role}: {tower}-{side}" for role, side in role_sides.items())
                    source.append(f"source.role_models={{{models}}}")
                needs = [tower]
            else:
                checkpoint = untrained_checkpoint(plan, tower) if "untrained" in row else final_checkpoint(plan, tower)
                source = [
                    "source=checkpoint",
                    f"source.checkpoint_dir={checkpoint}",
                    f"source.name={'untrained-' + tower if 'untrained' in row else tower}",
                    *checkpoint_overrides(plan, benchmark),
                ]
                needs = [] if "untrained" in row else [tower]
            overrides = [*plan.benchmarks[benchmark], *source, "reference_model=null", "show_progress=false"]
            if plan.get("cache_dir") and kind != "served":  # served rows must really go over HTTP
                overrides.append(f"cache_dir={Path(plan.cache_dir).expanduser()}")
            overrides.append(f"output_dir={folder}")
            out.append(Evaluation(row.name, benchmark, overrides, folder, needs, tower if kind == "served" else None))
    return out


def checkpoint_overrides(plan: DictConfig, benchmark: str) -> list[str]:
    """``checkpoint_overrides``, with a benchmark's own values (``benchmark_checkpoint_overrides``) replacing them."""
    specific = list((plan.get("benchmark_checkpoint_overrides") or {}).get(benchmark, []))
    keys = {override.split("=", 1)[0] for override in specific}
    general = [o for o in plan.get("checkpoint_overrides", []) if o.split("=", 1)[0] not in keys]
    return [*general, *specific]


def run_logged(command: list[str], log: Path, dry_run: bool) -> float:
    """Run ``command`` with its output in ``log``; return its wall time. Raises on a non-zero exit."""
    print("$ " + " ".join(command), flush=True)
    if dry_run:
        return 0.0
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("w") as handle:
        result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=os.environ.copy())
    seconds = time.time() - started
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode} after {seconds:.0f} s: see {log}")
    print(f"  done in {seconds:.0f} s ({log})", flush=True)
    return seconds


def ensure_pair_data(plan: DictConfig, step: str, dry_run: bool) -> None:
    """Build the pair datasets a tower trains on, or a benchmark reads, that are not built yet.

    ``plan.pair_data`` maps a tower or benchmark name to dataset names; each missing one is built
    with the command ``pairdata`` itself names for it (its ``FileNotFoundError`` says the same).
    """
    from pairdata.loading import build_command, default_data_dir
    from pairdata.store import is_complete

    root = default_data_dir()
    for name in (plan.get("pair_data") or {}).get(step, []):
        if is_complete(root, name):
            continue
        command = [sys.executable, "-m", *build_command(name).split()[2:], "--data-dir", str(root)]
        run_logged(command, ROOT / plan.runs_dir / "pairdata" / f"{name}.log", dry_run)


def train_tower(plan: DictConfig, tower: str, dry_run: bool) -> None:
    checkpoint = final_checkpoint(plan, tower)
    if checkpoint.is_dir():
        print(f"[{tower}] trained: {checkpoint}")
        return
    ensure_pair_data(plan, tower, dry_run)
    experiment = plan.towers[tower]
    command = ["accelerate", "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "train/contrastive.py", f"experiment={experiment}", "resume=auto",
               "logging=none"]  # fmt: skip
    run_dir = ROOT / plan.runs_dir / run_name(experiment)
    seconds = run_logged(command, run_dir / "towers-train.log", dry_run)
    if not dry_run:
        (run_dir / "towers-train.json").write_text(json.dumps({"command": command, "seconds": round(seconds)}) + "\n")


@contextmanager
def serving(plan: DictConfig, tower: str, log_dir: Path, dry_run: bool) -> Iterator[str]:
    """Export ``tower``'s final checkpoint, run ``python -m serve`` on it, yield its ``/v1`` URL."""
    export_dir = ROOT / plan.runs_dir / "exports" / tower
    if not (export_dir / "export.json").is_file():
        run_logged([sys.executable, "-m", "serve.export", str(final_checkpoint(plan, tower)), str(export_dir)],
                   log_dir / "export.log", dry_run)  # fmt: skip
    port = free_port()
    args = ["-m", "serve", "--model", str(export_dir), "--name", tower, "--port", str(port),
            *map(str, plan.get("serve_args", []))]  # fmt: skip
    print(f"$ {sys.executable} " + " ".join(args) + " &", flush=True)
    if dry_run:
        yield f"http://127.0.0.1:{port}/v1"
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "serve.log").open("w") as log:
        server = ServerProcess(args, port, log=log)
        try:
            server.wait_ready(timeout_s=600)
            yield f"{server.url}/v1"
        finally:
            server.stop()


def load_scores(plan: DictConfig) -> dict[str, dict[str, Any]]:
    """row -> {"scores": {key: value}, "seconds": {benchmark: s}} from the results on disk."""
    table: dict[str, dict[str, Any]] = {}
    for evaluation in evaluations(plan, None, None):
        entry = table.setdefault(evaluation.row, {"scores": {}, "seconds": {}})
        if evaluation.results.is_file():
            record = json.loads(evaluation.results.read_text())
            entry["scores"].update(record["scores"])
            entry["seconds"][evaluation.benchmark] = record.get("seconds")
    return table


def paper_values(plan: DictConfig) -> dict[str, dict[str, float]]:
    references = OmegaConf.load(ROOT / "configs" / "references" / "published.yaml")
    columns = {}
    for label, model in (plan.get("paper_columns") or {}).items():
        entries = references.get(model, {})
        columns[label] = {key: entry.value for key, entry in entries.items() if entry.get("value") is not None}
    return columns


def verdicts(plan: DictConfig, table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per tower: does it beat the untrained decoder on each of its own benchmarks?"""
    lines = []
    untrained = table.get("untrained", {}).get("scores", {})
    for tower, keys in plan.own_benchmarks.items():
        trained = table.get(tower, {}).get("scores", {})
        parts = []
        for key in keys:
            if key in trained and key in untrained:
                mark = "beats" if trained[key] > untrained[key] else "does NOT beat"
                parts.append(f"{key} {trained[key]:.2f} vs {untrained[key]:.2f}: {mark}")
            else:
                parts.append(f"{key}: not yet measured")
        lines.append(f"- {tower} tower vs untrained: " + "; ".join(parts))
    return lines


def served_lines(plan: DictConfig, table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per served row: its scores over HTTP beside the same tower's checkpoint scores."""
    lines = []
    for row in plan.rows:
        if "served" not in row:
            continue
        trained_row = next(
            (r.name for r in plan.rows if "trained" in r and set(row.served.values()) <= set(r.trained.values())), None
        )
        served, local = table.get(row.name, {}).get("scores", {}), table.get(trained_row, {}).get("scores", {})
        parts = [
            f"{key} {served[key]:.2f} served vs {local[key]:.2f} from the checkpoint ({served[key] - local[key]:+.2f})"
            for key in sorted(served)
            if key in local and any(key in COLUMN_KEYS.get(benchmark, []) for benchmark in row.served)
        ]
        lines.append(f"- {row.label}: " + ("; ".join(parts) if parts else "not yet measured"))
    return lines


def training_lines(plan: DictConfig) -> list[str]:
    lines = []
    for tower, experiment in plan.towers.items():
        info = ROOT / plan.runs_dir / run_name(experiment) / "towers-train.json"
        seconds = json.loads(info.read_text())["seconds"] if info.is_file() else None
        wall = f"{seconds / 60:.1f} min" if seconds else "not recorded"
        lines.append(f"- {tower}: `accelerate launch train/contrastive.py experiment={experiment}` ({wall})")
    return lines


def report(plan: DictConfig) -> str:
    """The markdown table: one row per score, one column per model row, then the paper's columns.

    Model rows with no result yet, and scores no model row has, are left out (and named below the table).
    """
    table = load_scores(plan)
    paper = paper_values(plan)
    rows = [row for row in plan.rows if table.get(row.name, {}).get("scores")]
    labels = [row.label for row in rows] + list(paper)
    lines = ["| score | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for group, keys in COLUMN_KEYS.items():
        if group not in plan.benchmarks:
            continue
        for key in keys:
            values = [table[row.name]["scores"].get(key) for row in rows]
            if all(value is None for value in values):
                continue
            cells = ["–" if value is None else f"{value:.2f}" for value in values]
            cells += ["–" if paper[label].get(key) is None else f"{paper[label][key]:.1f}" for label in paper]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    missing = [row.label for row in plan.rows if row not in rows]
    if missing:
        lines += ["", "Not measured yet: " + "; ".join(missing) + "."]
    body = [
        "## Scores (x100)",
        "",
        *lines,
        "",
        "## Trained vs untrained",
        "",
        *verdicts(plan, table),
        "",
        "## Served over HTTP vs the checkpoint",
        "",
        *served_lines(plan, table),
        "",
        "## Training",
        "",
        *training_lines(plan),
        "",
        "## Evaluation wall time (s)",
        "",
        *[
            f"- {row}: " + ", ".join(f"{b} {s:.0f}" for b, s in entry["seconds"].items() if s is not None)
            for row, entry in table.items()
            if entry["seconds"]
        ],
    ]
    return "\n".join(body) + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    partial.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--plan", type=Path, default=ROOT / "configs" / "towers.yaml")
    parser.add_argument("--rows", nargs="*", help="only these rows (names in the plan)")
    parser.add_argument("--benchmarks", nargs="*", help="only these benchmarks")
    parser.add_argument("--no-train", action="store_true", help="skip training; evaluate what exists")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from results on disk")
    args = parser.parse_args(argv)
    plan = load_plan(args.plan)
    if not args.report_only:
        jobs = evaluations(plan, args.rows, args.benchmarks)
        needed = sorted({tower for job in jobs for tower in job.needs})
        if not args.no_train:
            for tower in needed:
                train_tower(plan, tower, args.dry_run)
        for job in jobs:
            if job.results.is_file():
                print(f"[{job.row} / {job.benchmark}] done: {job.results}")
                continue
            missing = [t for t in job.needs if not final_checkpoint(plan, t).is_dir()]
            if missing and not args.dry_run:
                print(f"[{job.row} / {job.benchmark}] skipped: tower {missing} not trained")
                continue
            row = next(r for r in plan.rows if r.name == job.row)
            ensure_pair_data(plan, job.benchmark, args.dry_run)
            if "untrained" in row and not args.dry_run:
                build_untrained(plan, row.untrained[job.benchmark])
            command = [sys.executable, "eval/run.py", *job.overrides]
            if job.served is None:
                run_logged(command, job.output_dir / "run.log", args.dry_run)
                continue
            with serving(plan, job.served, job.output_dir, args.dry_run) as base_url:
                os.environ.setdefault("OPENAI_API_KEY", "unused")  # the local server checks no key
                run_logged([*command, f"source.base_url={base_url}"], job.output_dir / "run.log", args.dry_run)
    text = report(plan)
    path = ROOT / plan.output_dir / "report.md"
    if not args.dry_run:
        write_atomic(path, text)
    print(text)
    print(f"report: {path}")


if __name__ == "__main__":
    main()

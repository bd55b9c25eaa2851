"""The search (or code) tower with mined hard negatives: no negatives / round-1 / round-2, same recipe and seed.

    python scripts/hard_negatives.py                       # mine, train and score; finished steps are skipped
    python scripts/hard_negatives.py --negatives 3 --work runs/hard-negatives
    python scripts/hard_negatives.py --report-only
    python scripts/hard_negatives.py --tower code --precision bf16 --runs none round-2 --sample 12000

With ``--tower code`` the runs are ``experiment=code`` and each of the six ``code-*`` train splits is
mined on its own (negatives from the same language), a seeded random ``--sample`` of its rows in
proportion to its size (the pool is the sample's functions: the whole 101,857 at 64 tokens would take
hours here, and the recipe draws 1,088 rows); the negatives runs train on ``data=code_mined``, a
mixture of the six mined sets. Code runs are scored on the CodeSearchNet-style test sets with the
towers table's settings (configs/towers.yaml: first group of 1,000 per language, bf16, 256 tokens).

Round 1 mines ``text-search``'s train split with the untrained decoder (SmolLM2-135M with the
search tower's delimiters); round 2 with the search tower trained without negatives. Each of the
three runs is ``experiment=search`` (same steps, batch, seed, held-out rows), the negatives ones on
``data=mined`` with ``trainer.num_negatives``. Every run is scored by MRR and top-1 on the
``text-search`` valid split: each valid query ranked against every valid document (355 here),
cut at the recipe's 64 tokens. Mining, training and scoring run as the README's commands, in
subprocesses; each leaves a file on disk and a rerun picks up after it. ``report.md`` and
``results.json`` land in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.towers import checkpoint_overrides, load_plan  # noqa: E402
from scripts.towers import run_logged as towers_run_logged  # noqa: E402


def run_logged(command: list[str], log: Path) -> float:
    return towers_run_logged(command, log, dry_run=False)


RUNS = ("untrained", "none", "round-1", "round-2")
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16"}  # --precision -> the trainer's mixed_precision
CODE_SETS = ("code-go", "code-java", "code-javascript", "code-php", "code-python", "code-ruby")


def mining_targets(work: Path, name: str, args: argparse.Namespace) -> dict[str, Path]:
    """Built set -> the folder its mining run writes (search: one set; code: one folder per language)."""
    if args.tower == "search":
        return {"text-search": work / f"mined-{name}"}
    return {dataset: work / f"mined-{name}" / dataset for dataset in CODE_SETS}


def sample_sizes(args: argparse.Namespace) -> dict[str, int | None]:
    """``--sample`` rows shared among the code sets in proportion to their train rows (None: every row)."""
    if args.tower == "search":
        return {"text-search": None}
    if args.sample is None:
        return dict.fromkeys(CODE_SETS)
    from pairdata.trainsets import built

    rows = {dataset: len(built(dataset, "train")) for dataset in CODE_SETS}
    total = sum(rows.values())
    return {dataset: max(1, round(args.sample * count / total)) for dataset, count in rows.items()}


def final_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    return checkpoints[-1] if checkpoints and (run_dir / "timing.json").is_file() else None


def mine(work: Path, name: str, model_args: list[str], args: argparse.Namespace) -> None:
    targets = mining_targets(work, name, args)
    if all((out / "manifest.json").is_file() for out in targets.values()):
        return
    seconds = 0.0
    sizes = sample_sizes(args)
    commands = []
    for dataset, out in targets.items():
        command = [sys.executable, "-m", "eval.mine", *model_args, "--built", dataset, "--out", str(out),
                   "--num-negatives", str(args.mine_negatives), "--range-min", str(args.range_min),
                   "--max-length", str(args.max_length), "--precision", args.precision]  # fmt: skip
        if args.relative_margin is not None:
            command += ["--relative-margin", str(args.relative_margin)]
        if sizes[dataset] is not None:
            command += ["--sample", str(sizes[dataset])]
        commands.append(command)
        if not (out / "manifest.json").is_file():
            seconds += run_logged(command, work / "logs" / f"mine-{name}-{dataset}.log")
    timing = {"command": commands[0] if len(commands) == 1 else commands, "seconds": round(seconds)}
    (work / f"mined-{name}" / "timing.json").write_text(json.dumps(timing) + "\n")


def train(work: Path, name: str, args: argparse.Namespace) -> Path:
    run_dir = work / f"train-{name}"
    checkpoint = final_checkpoint(run_dir)
    if checkpoint is not None:
        return checkpoint
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", MIXED_PRECISION[args.precision], "--dynamo_backend", "no", "train/contrastive.py",
               f"experiment={args.tower}", f"trainer.mixed_precision={MIXED_PRECISION[args.precision]}",
               "resume=auto", "logging=none", f"hydra.run.dir={run_dir}"]  # fmt: skip
    if name != "none" and args.tower == "search":
        command += ["data=mined", f"data.path={work / f'mined-{name}'}", f"trainer.num_negatives={args.negatives}"]
    elif name != "none":
        command += ["data=code_mined", f"trainer.num_negatives={args.negatives}"]
        command += [f"data.datasets.{dataset}.path={out}" for dataset, out in mining_targets(work, name, args).items()]
    seconds = run_logged(command, work / "logs" / f"train-{name}.log")
    (run_dir / "timing.json").write_text(json.dumps({"command": command, "seconds": round(seconds)}) + "\n")
    checkpoint = final_checkpoint(run_dir)
    assert checkpoint is not None
    return checkpoint


def untrained_model(tower_name: str = "search"):
    """SmolLM2-135M with the tower's delimiters, before any step (what round 1 mines with)."""
    from omegaconf import OmegaConf

    from models import DecoderEmbedder

    tower = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "tower" / f"{tower_name}.yaml"))
    return DecoderEmbedder.build(pretrained="smollm2-135m", sides=tower["sides"], seed=0)


def score(checkpoint: Path | None, max_length: int, precision: str = "fp32") -> dict[str, float]:
    """MRR and top-1 of each valid query against every distinct valid document (``None``: the untrained decoder)."""
    import torch

    from models import DecoderEmbedder
    from models.precision import inference_autocast
    from pairdata.trainsets import built

    valid = built("text-search", "valid")
    documents = sorted(set(valid["y"]))
    position = {text: i for i, text in enumerate(documents)}
    model = untrained_model() if checkpoint is None else DecoderEmbedder.from_pretrained(checkpoint)
    with torch.inference_mode(), inference_autocast(precision):
        queries = model.encode(valid["x"], "query", batch_size=32, max_length=max_length)
        docs = model.encode(documents, "doc", batch_size=32, max_length=max_length)
    scores = queries @ docs.T
    truth = torch.tensor([position[y] for y in valid["y"]])
    ranks = (scores > scores.gather(1, truth[:, None])).sum(dim=1) + 1
    return {"mrr": round(100 * (1.0 / ranks.float()).mean().item(), 2),
            "top1": round(100 * (ranks == 1).float().mean().item(), 2), "queries": len(truth),
            "documents": len(documents)}  # fmt: skip


def benchmark(work: Path, name: str, checkpoint: Path, benchmark_name: str, precision: str) -> dict[str, float]:
    """``benchmark_name``'s scores of ``checkpoint`` with the towers table's settings (configs/towers.yaml), in
    ``precision`` (the table's bf16 is slower than fp32 on CPUs with AVX512-BF16 but no AMX)."""
    out = work / f"{benchmark_name}-{name}"
    if not (out / "results.json").is_file():
        plan = load_plan(ROOT / "configs" / "towers.yaml")
        command = [sys.executable, "eval/run.py", *plan.benchmarks[benchmark_name], "source=checkpoint",
                   f"source.checkpoint_dir={checkpoint}", f"source.name=hard-negatives-{name}",
                   *checkpoint_overrides(plan, benchmark_name), f"source.precision={precision}",
                   "reference_model=null", "show_progress=false",
                   f"output_dir={out}"]  # fmt: skip
        run_logged(command, work / "logs" / f"{benchmark_name}-{name}.log")
    return json.loads((out / "results.json").read_text())["scores"]


def arguana(work: Path, name: str, checkpoint: Path, precision: str) -> float:
    """BEIR ArguAna nDCG@10 of ``checkpoint`` with the towers table's settings."""
    return round(benchmark(work, name, checkpoint, "arguana", precision)["beir/arguana/ndcg@10"], 2)


def codesearchnet(work: Path, name: str, checkpoint: Path, precision: str) -> dict[str, float]:
    """MRR per language and averaged on the CodeSearchNet-style test sets (the towers table's settings)."""
    scores = benchmark(work, name, checkpoint, "codesearchnet", precision)
    return {key.split("/")[1]: round(value, 2) for key, value in scores.items() if key.endswith("/mrr")}


def untrained_checkpoint(work: Path, tower: str) -> Path:
    folder = work / "untrained" / "checkpoint"
    if not (folder / "config.json").is_file():
        untrained_model(tower).save_pretrained(folder)
    return folder


MINERS = {
    "untrained": "(not trained: the decoder with the {tower} delimiters)",
    "none": "-",
    "round-1": "untrained SmolLM2-135M + {tower} delimiters",
    "round-2": "{tower} tower (no negatives)",
}


def report(work: Path, args: argparse.Namespace) -> str:
    results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
    sampled = f", a random {args.sample} rows of the six code-* train splits" if args.sample else ""
    settings = (
        f"k = {args.negatives} hard negatives per row (mined {args.mine_negatives}, range_min {args.range_min}, "
        f"relative_margin {args.relative_margin}{sampled})"
    )
    if args.tower == "search":
        lines = [f"{settings}; text-search valid split, {args.max_length} tokens", "",
                 "| negatives | mined by | mining: s | training: s | held-out loss | text-search valid MRR | top-1 | "
                 "ArguAna nDCG@10 |", "|---|---|---:|---:|---|---:|---:|---:|"]  # fmt: skip
    else:
        languages = [dataset.removeprefix("code-") for dataset in CODE_SETS]
        lines = [f"{settings}; CodeSearchNet-style test sets (first group of 1,000 per language), MRR", "",
                 "| negatives | mined by | mining: s | training: s | held-out loss | " + " | ".join(languages)
                 + " | average |", "|---|---|---:|---:|---|" + "---:|" * (len(languages) + 1)]  # fmt: skip
    for name in RUNS:
        row = results.get(name)
        if not row:
            continue
        cells = [name, MINERS[name].format(tower=args.tower), row.get("mining_s", "-"), row.get("training_s", "-"),
                 row.get("held_out", "-")]  # fmt: skip
        if args.tower == "search":
            cells += [row["mrr"], row["top1"], row.get("arguana", "-")]
        else:
            cells += [row["codesearchnet"].get(language, "-") for language in [*languages, "average"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def scores(work: Path, name: str, checkpoint: Path | None, args: argparse.Namespace) -> dict:
    """The tower's own scores of a run: search, the valid split's MRR and top-1; code, CodeSearchNet MRR."""
    if args.tower == "search":
        return score(checkpoint, args.max_length, args.precision)
    checkpoint = checkpoint or untrained_checkpoint(work, args.tower)
    return {"codesearchnet": codesearchnet(work, name, checkpoint, args.precision)}


def held_out(run_dir: Path) -> str:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in records if "val_loss" in r]
    return f"{losses[0]:.2f} -> {losses[-1]:.2f}" if losses else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tower", choices=["search", "code"], default="search")
    parser.add_argument("--work", type=Path, default=None, help="default: runs/hard-negatives (code: -code)")
    parser.add_argument("--negatives", type=int, default=1, help="trainer.num_negatives of the training runs")
    parser.add_argument("--mine-negatives", type=int, default=7)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--relative-margin", type=float, default=None)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=RUNS)
    parser.add_argument("--sample", type=int, default=None,
                        help="code: mine a random N rows of the six sets (in proportion to their sizes)")  # fmt: skip
    parser.add_argument(
        "--precision",
        choices=sorted(MIXED_PRECISION),
        default="fp32",
        help="training (mixed precision), mining and scoring; bf16 on GPUs and CPUs with native bf16",
    )
    parser.add_argument(
        "--arguana",
        action="store_true",
        help="also score BEIR ArguAna nDCG@10 (the towers table's settings: 128 tokens; in --precision)",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.tower == "search" and args.sample is not None:
        parser.error("--sample is for --tower code (text-search is mined whole)")
    default_work = ROOT / "runs" / ("hard-negatives" if args.tower == "search" else "hard-negatives-code")
    work = (args.work or default_work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        results = json.loads((work / "results.json").read_text()) if (work / "results.json").is_file() else {}
        for name in args.runs:
            if name == "untrained":
                if name not in results:
                    results[name] = scores(work, name, None, args)
                if args.arguana and "arguana" not in results[name]:
                    untrained = untrained_checkpoint(work, args.tower)
                    results[name]["arguana"] = arguana(work, name, untrained, args.precision)
                (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
                continue
            if name == "round-1":
                mine(work, name, ["--model", "smollm2-135m", "--tower", args.tower], args)
            if name == "round-2":
                mine(work, name, ["--model", str(train(work, "none", args))], args)
            checkpoint = train(work, name, args)
            if name not in results:
                row = scores(work, name, checkpoint, args)
                row["training_s"] = json.loads((work / f"train-{name}" / "timing.json").read_text())["seconds"]
                row["held_out"] = held_out(work / f"train-{name}")
                if name != "none":
                    row["mining_s"] = json.loads((work / f"mined-{name}" / "timing.json").read_text())["seconds"]
                results[name] = row
            if args.arguana and "arguana" not in results[name]:
                results[name]["arguana"] = arguana(work, name, checkpoint, args.precision)
            (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = report(work, args)
    (work / "report.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

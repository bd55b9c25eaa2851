"""``python -m eval.mine``: mine hard negatives for a pair set with an embedding model (:mod:`eval.mining`).

Examples::

    python -m eval.mine --model smollm2-135m --tower search --built text-search --out mined/round-1
    python -m eval.mine --model outputs/search/checkpoints/step-000400 --built text-search --out mined/round-2
    python -m eval.mine --model ST_FOLDER --data 'pairs/*.parquet' --columns x=query,y=positive --out mined/st

(Until this module took it over, the command was ``python -m pairdata mine``: the same options.)
A rerun of the same command resumes an interrupted run; ``OUT/manifest.json`` is written last.
Train on the result with ``data=mined data.path=OUT trainer.num_negatives=K``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from pairdata.leakage import default_benchmark_dir
from pairdata.loading import default_data_dir


def parser() -> argparse.ArgumentParser:
    mine = argparse.ArgumentParser(prog="python -m eval.mine", description=__doc__.split("\n\n")[0])
    add_source_arguments(mine)
    add_filter_arguments(mine)
    mine.add_argument("--out", type=Path, required=True, help="output folder (a rerun resumes it)")
    mine.add_argument("--max-length", type=int, default=256)
    mine.add_argument("--batch-size", type=int, default=32)
    mine.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                      help="bf16: forward passes under torch.autocast (GPUs, CPUs with native bf16)")  # fmt: skip
    mine.add_argument("--query-block", type=int, default=4096, help="rows searched (and written) per part")
    mine.add_argument("--benchmark-dir", type=Path, default=default_benchmark_dir(),
                      help="candidates holding a benchmark text are never used (the shared/data folder)")  # fmt: skip
    mine.add_argument("--no-benchmark-check", action="store_true", help="skip the benchmark check of candidates")
    mine.add_argument("--quiet", action="store_true", help="no progress bars")
    return mine


def add_source_arguments(mine: argparse.ArgumentParser) -> None:
    """The mining model, the pair set and the candidate corpus."""
    mine.add_argument("--model", required=True, help="our checkpoint or export, a sentence-transformers folder, "
                      "or with --tower a pretrained decoder (name or folder), untrained")  # fmt: skip
    mine.add_argument("--tower", help="with an untrained decoder: the tower whose delimiters to add (configs/tower)")
    mine.add_argument("--sides", help="x,y sides of our model (default: the tower's pair sides, or its first two)")
    source = mine.add_mutually_exclusive_group(required=True)
    source.add_argument("--built", help="a set built by `pairdata build` (e.g. text-search)")
    source.add_argument("--data", help="pair files, folder or glob (JSONL / Parquet / CSV / Arrow)")
    mine.add_argument("--split", default="train", help="with --built: the split")
    mine.add_argument("--columns", type=_columns, default=None, help="with --data: e.g. x=query,y=positive")
    mine.add_argument("--data-dir", type=Path, default=default_data_dir())
    mine.add_argument("--corpus", help="candidate texts from these files instead of the set's own y's")
    mine.add_argument("--corpus-column", default="text")
    mine.add_argument("--limit", type=int, default=None, help="mine only the first N rows")
    mine.add_argument("--sample", type=int, default=None,
                      help="mine a random N rows (seeded by --seed, kept in the set's order; after --limit): built "
                           "sets are stored group by group, so their first rows come from a few packages")  # fmt: skip


def add_filter_arguments(mine: argparse.ArgumentParser) -> None:
    """Which ranked candidates become negatives (:class:`eval.mining.MiningFilters`)."""
    mine.add_argument("--num-negatives", type=int, default=7)
    mine.add_argument(
        "--range-min", type=int, default=0, help="skip the top N candidates (likely unlabelled positives)"
    )
    mine.add_argument("--range-max", type=int, default=100, help="consider only the top N candidates")
    mine.add_argument("--absolute-margin", type=float, default=None, help="keep if score <= positive - margin")
    mine.add_argument("--relative-margin", type=float, default=None, help="keep if score <= positive * (1 - margin)")
    mine.add_argument("--max-score", type=float, default=None, help="keep if score <= this")
    mine.add_argument("--sampling", choices=["top", "random"], default="top")
    mine.add_argument("--seed", type=int, default=0)


def _columns(text: str) -> dict[str, str]:
    try:
        return dict(item.split("=", 1) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. x=query,y=positive, got {text!r}") from None


def pair_set(args: argparse.Namespace) -> tuple[Any, str]:
    """The rows to mine (``x``, ``y``) and how the manifest names them."""
    from pairdata.mining import sample_rows
    from pairdata.trainsets import built, load_files

    if args.built:
        dataset = built(args.built, args.split, str(args.data_dir), limit=args.limit)
        label = f"{args.built}/{args.split}"
    else:
        dataset = load_files(args.data, columns=args.columns, limit=args.limit)
        label = args.data
    dataset = dataset.select_columns(["x", "y"])
    if args.sample is not None:
        dataset = sample_rows(dataset, args.sample, args.seed)
        label = f"{label} (random {len(dataset)} rows, seed {args.seed})"
    return dataset, label


def run_mine(args: argparse.Namespace, command: str) -> dict:
    from eval.mining import MiningFilters, load_encoder, mine
    from pairdata.mining import load_corpus

    filters = MiningFilters(
        num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
        absolute_margin=args.absolute_margin, relative_margin=args.relative_margin, max_score=args.max_score,
        sampling=args.sampling, seed=args.seed,
    )  # fmt: skip
    dataset, label = pair_set(args)
    corpus = load_corpus(args.corpus, args.corpus_column) if args.corpus else None
    leakage = None
    if not args.no_benchmark_check:
        from pairdata.leakage import benchmark_index

        leakage = benchmark_index(args.benchmark_dir)
    sides = args.sides.split(",") if args.sides else None
    encoder = load_encoder(args.model, args.tower, sides, args.max_length, args.batch_size, args.precision)
    manifest = mine(
        dataset, encoder, args.out, filters, corpus=corpus, corpus_column=args.corpus_column,
        leakage=leakage, query_block=args.query_block, show_progress=not args.quiet, command=command,
        source_label=label,
    )  # fmt: skip
    counts = manifest["counts"]
    print(
        f"{args.out}: {counts['rows']} rows, {counts['negatives']} negatives "
        f"({counts['rows_short']} rows with fewer than {filters.num_negatives}); pool {manifest['pool']['texts']} "
        f"texts ({manifest['pool']['leaked_removed']} removed as benchmark text); dropped {counts['dropped']}; "
        f"{manifest['seconds']}"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_mine(args, command="python -m eval.mine " + shlex.join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

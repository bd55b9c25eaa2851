"""``python -m pairdata``: build, list and benchmark the training and evaluation pair datasets.

Examples::

    python -m pairdata build code --language python --language java   # pinned offline sources
    python -m pairdata build code --language all
    python -m pairdata build code --language go --source ~/src/myrepo --name code-go-myrepo
    python -m pairdata build text        # text-neighbors
    python -m pairdata build search      # text-search
    python -m pairdata build all         # the six code sets, then text-neighbors and text-search
    python -m pairdata list
    python -m pairdata bench             # throughput table of the built datasets
    python -m pairdata audit runs/similarity-smollm2-135m   # contamination.json beside its newest checkpoint

A complete dataset is skipped unless ``--force``; an interrupted build resumes from its
per-source extractions. Every build writes ``DATA_DIR/NAME/manifest.json``. Hard-negative mining,
which needs an embedding model, is ``python -m eval.mine`` (it was ``python -m pairdata mine``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from pairdata.leakage import default_benchmark_dir
from pairdata.loading import default_data_dir
from pairdata.sources import DEFAULT_CACHE_DIR, SourceCache, SourceSpec, SourceUnavailableError
from pairdata.store import is_complete, read_manifest

log = logging.getLogger("pairdata")


def _fractions(text: str) -> dict[str, float]:
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. train=0.8,valid=0.1,test=0.1, got {text!r}") from None


MOVED = {"mine": "python -m eval.mine"}  # commands that moved out of pairdata (they need a model)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m pairdata", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    add_build(commands.add_parser("build", help="build datasets"))
    listing = commands.add_parser("list", help="list built datasets")
    listing.add_argument("--data-dir", type=Path, default=default_data_dir())
    bench = commands.add_parser("bench", help="throughput table (files/s, pairs/s) of built datasets")
    bench.add_argument("--data-dir", type=Path, default=default_data_dir())
    add_audit(commands.add_parser("audit", help="benchmark contamination of a checkpoint's training data"))
    for name, replacement in MOVED.items():  # listed in the help; main() answers them before parsing
        commands.add_parser(name, help=f"moved: {replacement} (same options)", add_help=False)
    return top


def add_build(build: argparse.ArgumentParser) -> None:
    """``build``: what to build, from which sources, and where (the recipe's knobs: :func:`add_recipe`)."""
    build.add_argument("what", choices=["code", "text", "search", "all"])
    build.add_argument(
        "--language",
        action="append",
        default=None,
        help="code language (repeatable, or 'all'): python java go php ruby javascript",
    )
    build.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="PATH",
        help="build from this folder or git checkout instead of the pinned sources (repeatable)",
    )
    build.add_argument(
        "--hf-dataset",
        action="append",
        default=None,
        metavar="NAME",
        help="text/search: also read this Hugging Face dataset (hub name when online, or a local folder)",
    )
    build.add_argument("--hf-split", default="train")
    build.add_argument("--hf-text-field", default="text")
    build.add_argument("--hf-title-field", default="title")
    build.add_argument("--name", help="dataset name (default code-LANGUAGE, text-neighbors, text-search)")
    build.add_argument(
        "--group-depth",
        type=int,
        default=None,
        help="split groups for --source: folder depth (0: each source is one group; "
        "default 0 with several sources, 1 with one)",
    )
    build.add_argument("--data-dir", type=Path, default=default_data_dir())
    build.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("CPT_SOURCE_CACHE", DEFAULT_CACHE_DIR)))
    build.add_argument(
        "--benchmark-dir",
        type=Path,
        default=default_benchmark_dir(),
        help="benchmark texts to keep out of training (the shared/data folder)",
    )
    build.add_argument(
        "--no-benchmark-check",
        action="store_true",
        help="skip benchmark leakage removal (the code test split is still removed)",
    )
    build.add_argument("--force", action="store_true", help="rebuild complete datasets")
    build.add_argument("--offline", action="store_true", help="never fetch: use the source cache only")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe(build)


def add_recipe(build: argparse.ArgumentParser) -> None:
    """``build``'s recipe: split shares, seeds, chunking and the near-duplicate threshold."""
    build.add_argument(
        "--fractions",
        type=_fractions,
        default=None,
        help="split shares, e.g. train=0.8,valid=0.1,test=0.1 (text default train=0.95,valid=0.05)",
    )
    build.add_argument("--seed", default="pairdata")
    build.add_argument("--near-threshold", type=float, default=0.8)
    build.add_argument("--chunk-tokens", type=int, default=128)
    build.add_argument("--min-chunk-tokens", type=int, default=32)
    build.add_argument("--max-doc-tokens", type=int, default=256)
    build.add_argument("--limit-files", type=int, default=None, help="read at most N files per source")


def add_audit(audit: argparse.ArgumentParser) -> None:
    """``audit``: a checkpoint's training data against the benchmark texts."""
    audit.add_argument("checkpoint", type=Path, help="a checkpoint folder, or a training run (its newest checkpoint)")
    audit.add_argument("--benchmark-dir", type=Path, default=default_benchmark_dir(),
                       help="the benchmark texts (the shared/data folder)")  # fmt: skip
    audit.add_argument("--data-dir", type=Path, default=default_data_dir(), help="where built code test splits are")
    audit.add_argument("--ngram", type=int, default=13, help="n-gram length of the overlap test (GPT-3: 13)")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")


def run_audit(args: argparse.Namespace, command: str) -> int:
    from pairdata.audit import audit, markdown_table

    if args.ngram < 1:
        raise SystemExit(f"--ngram must be at least 1, got {args.ngram}")
    benchmark_dir = args.benchmark_dir.expanduser()
    if not benchmark_dir.is_dir():
        raise SystemExit(f"benchmark folder {benchmark_dir} not found: pass --benchmark-dir (the shared/data folder)")
    try:
        path, report = audit(args.checkpoint, benchmark_dir, args.data_dir.expanduser(), args.ngram,
                             show_progress=not args.quiet, command=command)  # fmt: skip
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    print(markdown_table(report))
    print(f"\n{path}" + ("" if report["complete"] else "  (incomplete: see training_sets[].reason)"))
    return 0


def _benchmark_index(args: argparse.Namespace):
    from pairdata.leakage import benchmark_index

    if args.no_benchmark_check:
        return None
    if not args.benchmark_dir.is_dir():
        raise SystemExit(
            f"benchmark folder {args.benchmark_dir} not found: pass --benchmark-dir (the shared/data folder) "
            "or --no-benchmark-check"
        )
    started = time.perf_counter()
    index = benchmark_index(args.benchmark_dir)
    log.info(
        "benchmark index: %d texts from %s in %.1fs",
        index.texts,
        args.benchmark_dir,
        time.perf_counter() - started,
    )
    return index


def _with_code_test_splits(index, data_dir: Path):
    """Add every built code test split to the (text) leakage index."""
    from pairdata.leakage import LeakageIndex
    from pairdata.pairs import iter_jsonl

    index = index if index is not None else LeakageIndex()
    added = []
    for test_file in sorted(data_dir.glob("code-*/test.jsonl.gz")):
        for _, record in iter_jsonl(test_file):
            index.add_exact(record.get("docstring_summary") or "")
            index.add_exact(record.get("code") or "", by_sentence=False)
        added.append(str(test_file))
    index.files = [*index.files, *({"path": path, "kind": "code test split"} for path in added)]
    return index


def _user_specs(paths: list[str], group_depth: int | None) -> list[SourceSpec]:
    depth = group_depth if group_depth is not None else (0 if len(paths) > 1 else 1)
    specs = []
    for path in paths:
        folder = Path(path).expanduser().resolve()
        kind = "git" if (folder / ".git").exists() else "folder"
        specs.append(SourceSpec(name=folder.name, kind=kind, package=str(folder), group_depth=depth))
    return specs


def run_build(args: argparse.Namespace, command: str) -> list[dict]:
    from pairdata.code.languages import LANGUAGES

    cache = SourceCache(args.cache_dir, offline=args.offline)
    data_dir = args.data_dir.expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    show = not args.quiet
    manifests = []
    index = None
    if args.what in {"code", "all"}:
        from pairdata.code.build import build_code
        from pairdata.splits import DEFAULT_FRACTIONS

        languages = args.language or (["all"] if args.what == "all" else None)
        if not languages:
            raise SystemExit("build code needs --language (python, java, go, php, ruby, javascript or all)")
        if "all" in languages:
            languages = list(LANGUAGES)
        if args.source and args.name and len(languages) > 1:
            raise SystemExit("--name with --source builds one language at a time")
        for language in languages:
            specs = _user_specs(args.source, args.group_depth) if args.source else None
            name = args.name or (
                f"code-{language}-{Path(args.source[0]).resolve().name}" if args.source else f"code-{language}"
            )
            if is_complete(data_dir, name) and not args.force:
                log.info("%s is complete in %s (use --force to rebuild)", name, data_dir)
                manifests.append(read_manifest(data_dir, name))
                continue
            if index is None:
                index = _benchmark_index(args)
            log.info("building %s", name)
            manifests.append(
                build_code(
                    language,
                    data_dir=data_dir,
                    cache=cache,
                    leakage=index,
                    sources=specs,
                    name=name,
                    fractions=args.fractions or DEFAULT_FRACTIONS,
                    seed=args.seed,
                    near_threshold=args.near_threshold,
                    limit_files=args.limit_files,
                    show_progress=show,
                    command=command,
                )
            )
            _report(manifests[-1])
    kinds = {"text": ["neighbors"], "search": ["search"], "all": ["neighbors", "search"]}.get(args.what, [])
    if kinds:
        from pairdata.text.build import TEXT_FRACTIONS, build_text, folder_text_source, hf_text_source

        text_index = None
        for kind in kinds:
            name = args.name if args.name and args.what != "all" else f"text-{kind}"
            if is_complete(data_dir, name) and not args.force:
                log.info("%s is complete in %s (use --force to rebuild)", name, data_dir)
                manifests.append(read_manifest(data_dir, name))
                continue
            if text_index is None:
                text_index = _with_code_test_splits(index if index is not None else _benchmark_index(args), data_dir)
            sources = [folder_text_source(path) for path in args.source or []]
            sources += [
                hf_text_source(name, args.hf_split, args.hf_text_field, args.hf_title_field)
                for name in args.hf_dataset or []
            ]
            manifests.append(
                build_text(
                    kind,
                    data_dir=data_dir,
                    cache=cache,
                    leakage=text_index,
                    sources=sources or None,
                    name=name,
                    chunk_tokens=args.chunk_tokens,
                    min_chunk_tokens=args.min_chunk_tokens,
                    max_doc_tokens=args.max_doc_tokens,
                    fractions=args.fractions or TEXT_FRACTIONS,
                    seed=args.seed,
                    near_threshold=args.near_threshold,
                    limit_files=args.limit_files,
                    show_progress=show,
                    command=command,
                )
            )
            _report(manifests[-1])
    return manifests


def _report(manifest: dict) -> None:
    counts = manifest["counts"]["splits"]
    skipped = {}
    for source in manifest["sources"]:
        for key, value in source["stats"].items():
            if key in {"unreadable", "undecodable", "unparsable", "too_large"} or key.startswith("unparsable_"):
                skipped[key] = skipped.get(key, 0) + value
    print(
        f"{manifest['name']}: {counts} in {manifest['timing']['build_seconds']:.0f}s; skipped files: "
        f"{skipped or 'none'}",
        flush=True,
    )


def run_list(data_dir: Path) -> None:
    root = data_dir.expanduser()
    names = sorted(path.name for path in root.iterdir() if (path / "manifest.json").is_file()) if root.is_dir() else []
    if not names:
        print(f"no datasets built in {root}")
        return
    for name in names:
        manifest = read_manifest(root, name)
        print(f"{name:24s} {manifest['counts']['splits']}  built {manifest['created_utc']}")
    for partial in sorted(root.glob(".*.partial")):
        print(f"{partial.name:24s} unfinished build (rerun the same command to resume)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in MOVED:
        print(f"`python -m pairdata {argv[0]}` moved to `{MOVED[argv[0]]}`, with the same options: "
              f"{MOVED[argv[0]]} {shlex.join(argv[1:])}", file=sys.stderr)  # fmt: skip
        return 2
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "list":
        run_list(args.data_dir)
        return 0
    if args.command == "bench":
        from pairdata.bench import print_table

        print_table(args.data_dir)
        return 0
    if args.command == "audit":
        return run_audit(args, command="python -m pairdata " + shlex.join(argv))
    try:
        run_build(args, command="python -m pairdata " + shlex.join(argv))
    except SourceUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

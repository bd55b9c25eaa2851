"""Evaluation entry point: score one model source on one benchmark and check it against references.

Usage (from the project root)::

    python eval/run.py benchmark=sts                       # all-MiniLM-L6-v2 on STS-B and SICK-R
    python eval/run.py benchmark=beir check=true           # ArguAna nDCG@10; exit 1 on a miss
    python eval/run.py benchmark=beir source=bm25
    python eval/run.py benchmark=senteval cache_dir=/tmp/cpt-eval-cache
    python eval/run.py benchmark=beir source=checkpoint source.checkpoint_dir=runs/x/final
    python eval/run.py benchmark=sts dimensions=[64,128,256,null]   # one table over sizes
    python eval/run.py benchmark=beir benchmark.index=hnsw         # faiss HNSW, recall@100 vs exact reported
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 eval/run.py benchmark=beir  # 2 processes

Writes ``results.json`` and ``results.md`` (atomically) to ``output_dir`` with the model, the
sha256 of every data file read, the git commit and the resolved config, and prints the table; and
mteb's ``TaskResult`` files with a ``model_meta.json`` under ``output_dir/mteb`` (``eval.mteb_results``).
Configs: ``configs/eval.yaml`` with groups ``source/``, ``benchmark/`` and ``references/``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts eval/ itself first on sys.path, where eval/data.py etc. would shadow
# top-level modules of the same names; the project root must be there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == _ROOT / "eval":
    sys.path[0] = str(_ROOT)
elif str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

logger = logging.getLogger("eval.run")


def _seed_everything(seed: int, torch_threads: int | None) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules or torch_threads is not None:
        import torch

        torch.manual_seed(seed)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


def run(cfg: DictConfig, command: str | None = None) -> dict[str, Any]:
    """Build the source and benchmark from ``cfg``, run, compare, write results; return the record.

    The returned record has ``rows`` (each with reference, difference and ``passed``) and
    ``failed``: the score keys that missed their reference. ``command`` is recorded as given (the
    CLI passes its command line).
    """
    from hydra.utils import instantiate

    from eval.benchmarks import Context
    from eval.distributed import Shards

    started = time.time()
    _seed_everything(cfg.seed, cfg.get("torch_threads"))
    shards = Shards.from_environment()
    source = instantiate(cfg.source, _convert_="all")
    benchmark = instantiate(cfg.benchmark, _convert_="all")
    model_name = getattr(source, "name", type(source).__name__)
    with _work_dir(cfg, shards) as work_dir:
        context = Context.for_source(source, model_name, cfg.cache_dir, cfg.show_progress, shards, work_dir)
        return _run(cfg, command, started, source, benchmark, model_name, context)


@contextlib.contextmanager
def _work_dir(cfg: DictConfig, shards: Any) -> Iterator[Path]:
    """The run's scratch folder for uncached corpus embeddings: made by the main process, shared, removed after."""
    root = cfg.get("work_dir")
    path = None
    if shards.is_main:
        if root is not None:
            Path(root).expanduser().mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix="cpt-eval-", dir=None if root is None else Path(root).expanduser())
    path = shards.broadcast(path)
    try:
        yield Path(path)
    finally:
        shards.barrier()
        if shards.is_main:
            shutil.rmtree(path, ignore_errors=True)


def _run(cfg: DictConfig, command: str | None, started: float, source: Any, benchmark: Any, model_name: str,
         context: Any) -> dict[str, Any]:  # fmt: skip
    from eval.benchmarks import BenchmarkOutput
    from eval.data import sha256_file
    from eval.dimensions import MemoisedEncoder, PrefixEncoder, check_sizes, scores_at, size_table
    from eval.report import compare, git_commit, markdown_table, write_plot, write_results

    logger.info("benchmark %s, model %s", benchmark.name, model_name)
    sizes = check_sizes(cfg.get("dimensions"))
    if sizes == [None]:
        output = benchmark.run(context)
    else:
        full = MemoisedEncoder(context.require_dense(f"{benchmark.name} with dimensions"))
        output = BenchmarkOutput(scores=[], details={"dimensions": sizes})
        for size in sizes:
            logger.info("embedding size %s", size or "full")
            context.encoder = PrefixEncoder(full, size)
            part = benchmark.run(context)
            output.scores += scores_at(part.scores, size)
            output.data_files.update(part.data_files)
            output.details[f"size={size or 'full'}"] = part.details

    references = None
    if cfg.reference_model is not None:
        references = cfg.references.get(cfg.reference_model)
        if references is None:
            logger.warning("no references for %r in configs/references; nothing is checked", cfg.reference_model)
        else:
            references = OmegaConf.to_container(references, resolve=True)
    rows = compare(output.scores, references)
    failed = [row.key for row in rows if row.passed is False]
    record: dict[str, Any] = {
        "benchmark": benchmark.name,
        "model": model_name,
        "source_fingerprint": source.fingerprint(),
        "reference_model": cfg.reference_model,
        "scores": {score.key: round(score.value, 4) for score in output.scores},
        "failed": failed,
        "details": output.details,
        "data_sha256": {label: sha256_file(path) for label, path in output.data_files.items()},
        "data_files": {label: str(path) for label, path in output.data_files.items()},
        "git_commit": git_commit(_ROOT),
        "command": command,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "seconds": round(time.time() - started, 1),
    }
    if sizes != [None]:
        record["size_table"] = size_table(output.scores, sizes, full.embedding_size)
    record["processes"] = context.shards.world
    record["peak_rss_mib"] = context.shards.gather(_peak_rss_mib())  # per process, in rank order
    if not context.shards.is_main:  # every process computed the same scores; the main one writes them
        record["rows"] = rows
        return record
    output_dir = Path(cfg.output_dir)
    if cfg.get("mteb_results", True):
        record.update(_mteb_results(output_dir, benchmark.name, output, source, model_name, record["seconds"]))
    json_path, md_path = write_results(output_dir, record, rows)
    if cfg.plot:
        write_plot(output_dir / "results.png", rows, f"{benchmark.name}: {model_name}")
    print(markdown_table(rows))
    if "size_table" in record:
        print("\n" + record["size_table"])
    print(f"\nresults: {json_path} and {md_path}")
    checked = [row for row in rows if row.passed is not None]
    if cfg.check and not checked:
        logger.warning("check=true but no score has a reference value for %r", cfg.reference_model)
    if failed:
        logger.warning("missed references: %s", ", ".join(failed))
    record["rows"] = rows
    return record


def _peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _mteb_results(output_dir: Path, benchmark: str, output: Any, source: Any, model_name: str, seconds: float) -> dict:
    """mteb's TaskResult files and model_meta.json under ``output_dir/mteb`` (eval.mteb_results)."""
    from eval.mteb_results import write_mteb_results

    metadata = source.model_metadata() if hasattr(source, "model_metadata") else {}
    summary = write_mteb_results(output_dir, benchmark, output.scores, output.details, model_name, metadata, seconds)
    if summary["folder"]:
        logger.info("MTEB results (%s): %s", ", ".join(summary["tasks"]), summary["folder"])
    return {"mteb": summary, "model_metadata": metadata}


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    record = run(cfg, command=" ".join(["python", "eval/run.py", *sys.argv[1:]]))
    if cfg.check and record["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()

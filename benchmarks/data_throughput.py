"""The data path at scale: peak memory against dataset size, workers, and the loop against sentence-transformers.

Two tables on their own (issue 39), each before/after when given the code from before:

* ``--mixture-steps``: seconds from a fresh process's batcher to its first batch when a 7-source
  mixture resumes at each step, the ms per step after it and the peak RSS; ``--old-batching FILE``
  (``git show 9ed8302:train/batching.py > FILE``) times the per-step draws it replaced, up to
  ``--old-max-step`` (beyond, scaled by the square of the step from the largest measured one, marked
  extrapolated);
* ``--convert PATH``: converting one Parquet file (peak RSS, anonymous peak) and the next start
  (conversion cached), each in a fresh process with an empty ``datasets`` cache; ``--before-tree``
  (a git worktree of an older commit) measures that commit's ``load_files`` the same way.

Otherwise three tables, all measured in one run on this machine:

1. peak RSS (``VmHWM``) of a short training run (tiny random decoder) on Parquet sets of 100k, 1M
   and 10M rows of real text (the STS-B/MRPC paraphrase pairs, repeated), memory-mapped (after a
   one-time Arrow conversion, measured on its own) and streamed; each run in a fresh process;
2. training tokens/s with ``trainer.num_workers`` 0 vs 2, on the tiny decoder (where tokenizing is a
   visible share of a step) and on SmolLM2-135M, alternating rounds, median over steps;
3. pairs/s of the whole loop against ``SentenceTransformerTrainer`` with
   ``MultipleNegativesSymmetricRankingLoss`` on the same ``datasets`` dataset (SmolLM2-135M, full
   fine-tuning, fp32, same batch and length), alternating rounds, median seconds per step.

Usage:
    python benchmarks/data_throughput.py                              # everything (~20 min on 2 cores)
    python benchmarks/data_throughput.py --rows 100000 1000000 --skip-smollm
    python benchmarks/data_throughput.py --mixture-steps 1000 10000 100000 1000000 --old-batching OLD.py
    python benchmarks/data_throughput.py --convert big.parquet --before-tree /tmp/oldtree
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import train_throughput as peer  # noqa: E402  (compose, backbone_folder, peak_rss_mib, TINY_MODEL)

MIXTURE_WEIGHTS = [0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05]  # 7 sources, as in the resumed run
MIXTURE_SOURCE_ROWS = 1_000_000
CHUNK_ROWS = 1_000_000
ROW_GROUP_ROWS = 100_000  # a streamed Parquet file is read a row group at a time: its size bounds stream memory


def write_parquet(path: Path, rows: int, data_dir: Path) -> Path:
    """``rows`` pairs of real paraphrase text (repeated in order) as Parquet, written in chunks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pairdata.paraphrase import senteval_paraphrase_pairs

    if path.is_file():
        metadata = pq.ParquetFile(path).metadata
        if metadata.num_rows == rows and metadata.row_group(0).num_rows == min(rows, ROW_GROUP_ROWS):
            return path
    pairs = senteval_paraphrase_pairs(str(data_dir / "senteval"))
    xs, ys = [p.x for p in pairs], [p.y for p in pairs]
    temporary = path.with_suffix(".tmp")
    schema = pa.schema([("query", pa.string()), ("positive", pa.string())])
    with pq.ParquetWriter(temporary, schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            index = [i % len(pairs) for i in range(start, min(rows, start + CHUNK_ROWS))]
            table = pa.table({"query": [xs[i] for i in index], "positive": [ys[i] for i in index]})
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
    os.replace(temporary, path)
    return path


def files_overrides(path: Path, streaming: bool) -> list[str]:
    return ["data=files", f"data.path={path}", "data.columns.x=query", "data.columns.y=positive",
            f"data.streaming={str(streaming).lower()}"]  # fmt: skip


class AnonymousPeak:
    """Samples this process's anonymous resident memory (``RssAnon``) in a thread and keeps the peak.

    ``VmHWM`` also counts the file-backed pages of memory-mapped Arrow files that were touched: clean
    page cache the kernel can drop at any time. The anonymous part is what the process really holds.
    """

    def __init__(self, interval: float = 0.02) -> None:
        import threading

        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            time.sleep(interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def child_resume(args: argparse.Namespace) -> None:
    """A fresh mixture batcher's first batch at ``args.steps`` (a resume), then 100 more steps; prints JSON."""
    if args.batching:
        spec = importlib.util.spec_from_file_location("batching_under_test", args.batching)
        batching = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(batching)  # type: ignore[union-attr]
    else:
        from train import batching
    started = time.perf_counter()
    sizes = [MIXTURE_SOURCE_ROWS] * len(MIXTURE_WEIGHTS)
    batcher = batching.MixtureBatcher(sizes, MIXTURE_WEIGHTS, args.batch, 0, False)
    batcher.global_batch(args.steps)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for step in range(args.steps + 1, args.steps + 101):
        batcher.global_batch(step)
    print(json.dumps({"first_batch_s": first, "next_ms_per_step": (time.perf_counter() - started) * 10,
                      "peak_rss_mib": peer.peak_rss_mib()}))  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    if args.child == "resume":
        child_resume(args)
        return
    anonymous = AnonymousPeak()
    started = time.perf_counter()
    if args.child == "prepare":
        from pairdata.trainsets import load_files

        dataset = load_files(str(args.path), columns={"x": "query", "y": "positive"})
        out = {"rows": len(dataset)}
    else:
        from train.contrastive import train

        with tempfile.TemporaryDirectory() as work:
            # the tiny decoder trains whole; SmolLM2 as the offline default does (top 6 blocks)
            model = (
                [*peer.model_overrides("tiny"), "trainer.train_top_layers=null"]
                if args.model == "tiny"
                else [f"model={args.model}"]
            )
            cfg = peer.compose(
                [*model, "trainer=cpu", "logging=none", *files_overrides(args.path, args.child == "stream"),
                 f"trainer.steps={args.steps}", f"trainer.batch_size={args.batch}",
                 f"trainer.max_length={args.max_length}", f"trainer.num_workers={args.workers}",
                 "trainer.val_pairs=0", "trainer.eval_every=0", "trainer.warmup_steps=0", *peer.PADDED_FP32],
                Path(work),
            )  # fmt: skip
            train(cfg, Path(work))
            records = [json.loads(line) for line in (Path(work) / "metrics.jsonl").read_text().splitlines()]
        timed = records[2:] or records[1:]
        out = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed),
            "pairs_per_s": statistics.median(r["pairs_per_s"] for r in timed),
        }
    out.update(seconds=time.perf_counter() - started, peak_rss_mib=peer.peak_rss_mib(), peak_anon_mib=anonymous.stop())
    print(json.dumps(out))


def run_child(mode: str, path: Path, tree: Path = REPO_ROOT, env: dict | None = None, **options: object) -> dict:
    """``mode`` measured in a fresh process running ``tree``'s copy of this script; adds its CPU seconds."""
    command = [sys.executable, str(tree / "benchmarks" / Path(__file__).name), "--child", mode, "--path", str(path)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"), **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{mode} on {path} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out


def mixture_table(args: argparse.Namespace) -> None:
    """Resume cost of a 7-source mixture against the step, before (per-step draws) and after (blocks)."""
    print(f"\n## Resuming a 7-source mixture ({MIXTURE_SOURCE_ROWS:,} rows each, global batch {args.batch}): "
          "fresh process, seconds to the first batch, then ms per step over the next 100, peak RSS\n")  # fmt: skip
    measured: dict[int, dict] = {}
    if args.old_batching:
        for steps in [s for s in args.mixture_steps if s <= args.old_max_step]:
            measured[steps] = run_child("resume", Path("-"), steps=steps, batch=args.batch, batching=args.old_batching)
    fit = _quadratic_fit({s: m["first_batch_s"] for s, m in measured.items()})
    print("| resume at step | before: s to first batch | before: ms/step after | before: peak RSS MiB "
          "| after: s to first batch | after: ms/step after | after: peak RSS MiB |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for steps in args.mixture_steps:
        new = run_child("resume", Path("-"), steps=steps, batch=args.batch)
        old = measured.get(steps)
        if old is not None:
            before = f"{old['first_batch_s']:.2f} | {old['next_ms_per_step']:.2f} | {old['peak_rss_mib']:.0f}"
        elif fit is not None:
            before = f"~{fit(steps):,.0f} (extrapolated) | - | -"
        else:
            before = "- | - | -"
        print(f"| {steps:,} | {before} | {new['first_batch_s']:.2f} | {new['next_ms_per_step']:.2f} | "
              f"{new['peak_rss_mib']:.0f} |", flush=True)  # fmt: skip


def _quadratic_fit(points: dict[int, float]):
    """t(step) = t(largest measured step) * (step / that step)^2: the replay is quadratic in the step
    (each step's ``np.vstack`` copies every earlier step's counts); None without a measurement."""
    if not points:
        return None
    largest = max(points)
    return lambda step: points[largest] * (step / largest) ** 2


def conversion_table(args: argparse.Namespace) -> None:
    """Converting one large Parquet file and the next start, before (``--before-tree``) and after."""
    size_gb = args.convert.stat().st_size / 1e9
    print(f"\n## Converting {args.convert.name} ({size_gb:.2f} GB Parquet) into Arrow, then starting again\n")
    print("Each cell a fresh process; the first with an empty `datasets` cache (conversion + row check), the "
          "second with the cache it left (what every later start and resume pays). RSS = VmHWM, anon = RssAnon "
          "peak.\n")  # fmt: skip
    print("| code | first: s | first: CPU s | first: RSS / anon MiB | next start: s | next start: CPU s "
          "| next start: RSS / anon MiB |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    trees = ([(args.before_tree, f"before ({_commit(args.before_tree)})")] if args.before_tree else []) + [
        (REPO_ROOT, f"after ({_commit(REPO_ROOT)})")
    ]
    for tree, label in trees:
        with tempfile.TemporaryDirectory(dir=args.work) as cache:
            env = {"HF_DATASETS_CACHE": cache}
            cells = []
            for _ in range(2):
                m = run_child("prepare", args.convert, tree=tree, env=env)
                memory = f"{m['peak_rss_mib']:.0f} / {m['peak_anon_mib']:.0f}"
                cells.append(f"{m['seconds']:.1f} | {m['cpu_s']:.1f} | {memory}")
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


def _commit(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def memory_table(args: argparse.Namespace) -> None:
    print("\n## Peak RSS of a training run against dataset size (tiny decoder, 30 steps of 32 pairs)\n")
    print("Peak RSS (VmHWM) / peak anonymous RSS (RssAnon, sampled every 20 ms), MiB. VmHWM also counts the")
    print("clean file-backed pages of the memory-mapped Arrow files that were touched (page cache).\n")
    print("| rows | Parquet MB | Arrow conversion: s | conversion: RSS / anon "
          "| memory-mapped run: RSS / anon | streamed run: RSS / anon |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in args.rows:
        path = write_parquet(args.work / f"pairs-{rows}.parquet", rows, args.data_dir)
        prepared = run_child("prepare", path)
        mapped = run_child("mmap", path)
        streamed = run_child("stream", path)
        cells = [f"{m['peak_rss_mib']:.0f} / {m['peak_anon_mib']:.0f}" for m in (prepared, mapped, streamed)]
        print(f"| {rows:,} | {path.stat().st_size / 1e6:.0f} | {prepared['seconds']:.0f} | {' | '.join(cells)} |",
              flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cpt-data-bench")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-smollm", action="store_true", help="tiny decoder only (tables 2 and 3 shrink)")
    parser.add_argument("--skip-memory", action="store_true", help="tables 2 and 3 only")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--mixture-steps", type=int, nargs="*", default=None,
                        help="only the mixture-resume table, at these steps")  # fmt: skip
    parser.add_argument("--old-batching", help="train/batching.py from before the blocks (a file), timed beside")
    parser.add_argument("--old-max-step", type=int, default=100_000, help="steps beyond are extrapolated for it")
    parser.add_argument("--convert", type=Path, help="only the conversion table, on this Parquet file")
    parser.add_argument("--before-tree", type=Path, help="a worktree of the commit to compare the conversion with")
    parser.add_argument("--child", choices=["prepare", "mmap", "stream", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--batching", help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help="global batch of the runs and of the mixture table")
    parser.add_argument("--max-length", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(args.work / "hf-cache"))
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    if args.mixture_steps or args.convert:
        if args.mixture_steps:
            mixture_table(args)
        if args.convert:
            conversion_table(args)
        print(f"\n# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return

    if not args.skip_memory:
        memory_table(args)

    path = write_parquet(args.work / "pairs-100000.parquet", 100_000, args.data_dir)
    run_child("prepare", path)
    models = [("tiny", 30, 32, 32)] + ([] if args.skip_smollm else [("smollm2-135m", 8, 16, 32)])
    print("\n## Training tokens/s, trainer.num_workers 0 vs 2 (median over steps; rounds alternate)\n")
    print("| model | batch x tokens | workers 0: tokens/s | workers 2: tokens/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for model, steps, batch, length in models:
        measured: dict[int, list[float]] = {0: [], 2: []}
        for _ in range(args.rounds):
            for workers in (0, 2):
                out = run_child("mmap", path, model=model, steps=steps, batch=batch, max_length=length, workers=workers)
                measured[workers].append(out["tokens_per_s"])
        zero, two = statistics.median(measured[0]), statistics.median(measured[2])
        print(f"| {model} | {batch} x {length} | {zero:.0f} | {two:.0f} | {two / zero:.2f} |", flush=True)

    if not args.skip_smollm:
        from pairdata.trainsets import load_files

        columns = load_files(str(path), columns={"x": "query", "y": "positive"}).rename_columns(
            {"x": "anchor", "y": "positive"}
        )  # the same memory-mapped dataset our loop reads
        model, batch, length, steps = "smollm2-135m", 16, 32, 4
        folder = peer.backbone_folder(model, args.work)
        ours, theirs = [], []
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory() as work:
                ours.append(
                    peer.ours_seconds_per_step(
                        model, files_overrides(path, False), batch, length, steps, Path(work) / f"ours-{round_}"
                    )
                )
            with tempfile.TemporaryDirectory() as work:
                theirs.append(peer.sentence_transformers_seconds(folder, columns, batch, length, steps, Path(work)))
        print(f"\n## The whole loop vs sentence-transformers ({model}, batch {batch}, {length} tokens, full "
              f"fine-tuning, fp32, {args.rounds} alternating rounds of {steps} steps)\n")  # fmt: skip
        print("| trainer | s/step per round | pairs/s (median) | ratio |")
        print("|---|---|---:|---:|")
        print(f"| sentence-transformers MNSRL | {' / '.join(f'{s:.2f}' for s in theirs)} | "
              f"{batch / statistics.median(theirs):.2f} | 1.00 |")  # fmt: skip
        print(f"| ours | {' / '.join(f'{s:.2f}' for s in ours)} | {batch / statistics.median(ours):.2f} | "
              f"{statistics.median(theirs) / statistics.median(ours):.2f} |")  # fmt: skip
    print(f"\n# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

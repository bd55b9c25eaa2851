"""The data path at scale: peak memory against dataset size, workers, and the loop against sentence-transformers.

Three tables, all measured in one run on this machine:

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
"""

from __future__ import annotations

import argparse
import json
import os
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


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
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


def run_child(mode: str, path: Path, **options: object) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--path", str(path)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{mode} on {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--child", choices=["prepare", "mmap", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(args.work / "hf-cache"))
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")

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

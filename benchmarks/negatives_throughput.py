"""Training pairs/s with k hard negatives per row: our loop against sentence-transformers' MNRL.

Both train the same decoder (SmolLM2-135M by default; full fine-tuning, fp32, CPU) on the same
Parquet rows (STS-B/MRPC paraphrase pairs; row i's negatives are the positives of rows i+1..i+k,
in columns ``negative_1..negative_k``), with the same batch size and sequence length, in
alternating rounds of the same run. Ours reads them with ``data.columns.negatives='negative_*'``
and ``trainer.num_negatives=k`` (symmetric InfoNCE, negatives on the x -> y side);
sentence-transformers with ``MultipleNegativesRankingLoss`` over the columns ``anchor, positive,
negative_1..negative_k``. Reported: median seconds per step after the first, pairs/s and the ratio.

Usage:
    python benchmarks/negatives_throughput.py                     # k = 1 and 7, ~10 min on 2 cores
    python benchmarks/negatives_throughput.py --model tiny --negatives 1 7 --steps 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import train_throughput as peer  # noqa: E402  (compose, backbone_folder, model_overrides, the ST timing)


def write_rows(path: Path, most: int, data_dir: Path, rows: int = 2000) -> Path:
    import pandas as pd

    from pairdata.paraphrase import senteval_paraphrase_pairs

    pairs = senteval_paraphrase_pairs(str(data_dir / "senteval"))[:rows]
    table = {"query": [p.x for p in pairs], "positive": [p.y for p in pairs]}
    for j in range(1, most + 1):
        table[f"negative_{j}"] = [pairs[(i + j) % len(pairs)].y for i in range(len(pairs))]
    pd.DataFrame(table).to_parquet(path)
    return path


def ours_seconds(model: str, path: Path, k: int, batch: int, length: int, steps: int, work: Path) -> float:
    from train.contrastive import train

    cfg = peer.compose(
        [*peer.model_overrides(model), "trainer=cpu", "logging=none", "data=files", f"data.path={path}",
         "data.columns.x=query", "data.columns.y=positive", "data.columns.negatives=negative_*",
         f"trainer.num_negatives={k}", f"trainer.steps={steps}", f"trainer.batch_size={batch}",
         f"trainer.max_length={length}", "trainer.train_top_layers=null", "trainer.val_pairs=0",
         "trainer.eval_every=0", "trainer.warmup_steps=0", *peer.PADDED_FP32],
        work,
    )  # fmt: skip
    train(cfg, work)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(batch / r["pairs_per_s"] for r in records[1:])


def theirs_seconds(folder: str, path: Path, k: int, batch: int, length: int, steps: int, work: Path) -> float:
    import pandas as pd
    from datasets import Dataset

    frame = pd.read_parquet(path)
    columns = {"anchor": frame["query"], "positive": frame["positive"]}
    columns.update({f"negative_{j}": frame[f"negative_{j}"] for j in range(1, k + 1)})
    dataset = Dataset.from_dict({name: list(values) for name, values in columns.items()})
    return peer.sentence_transformers_seconds(folder, dataset, batch, length, steps, work, loss="mnrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a configs/model option, or 'tiny'")
    parser.add_argument("--negatives", type=int, nargs="*", default=[1, 7])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    )
    args = parser.parse_args()
    print(f"# load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path = write_rows(work / "rows.parquet", max(args.negatives), args.data_dir)
        backbone = peer.backbone_folder(args.model, work)
        print(f"{args.model}, batch {args.batch}, {args.max_length} tokens, full fine-tuning, fp32, "
              f"{args.rounds} round(s) of {args.steps} steps, order alternating\n")  # fmt: skip
        print("| k | ours s/step | sentence-transformers MNRL s/step | ours pairs/s | theirs pairs/s | ratio |")
        print("|---:|---:|---:|---:|---:|---:|")
        for k in args.negatives:
            ours, theirs = [], []
            for round_ in range(args.rounds):
                order = ("ours", "theirs") if round_ % 2 == 0 else ("theirs", "ours")  # alternate who goes first
                for who in order:
                    if who == "ours":
                        ours.append(ours_seconds(args.model, path, k, args.batch, args.max_length, args.steps,
                                                 work / f"ours-{k}-{round_}"))  # fmt: skip
                    else:
                        theirs.append(theirs_seconds(backbone, path, k, args.batch, args.max_length, args.steps,
                                                     work / f"theirs-{k}-{round_}"))  # fmt: skip
            mine, peers = statistics.median(ours), statistics.median(theirs)
            print(f"| {k} | {mine:.2f} | {peers:.2f} | {args.batch / mine:.2f} | {args.batch / peers:.2f} | "
                  f"{peers / mine:.2f} |", flush=True)  # fmt: skip
    print(f"\n# load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

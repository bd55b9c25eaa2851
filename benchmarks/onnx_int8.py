"""ONNX fp32 and int8 against torch: STS-B Spearman, cosine to the torch vectors, and texts/s, in one run.

Exports a checkpoint with ``--onnx-int8`` (or reads an export that has them), encodes the STS-B
test pairs (1,379 pairs, both sentences) with ``DecoderEmbedder.encode`` (fp32), the fp32 ONNX
graph and the int8 graph (onnxruntime), same threads, and prints, per runtime: Spearman x100
(MTEB's protocol: cosine of each pair against the human score), the drop against torch, the
min / mean cosine of each vector to torch's, and texts/s.

Usage:
    python benchmarks/onnx_int8.py --checkpoint runs/x/checkpoints/step-60 --side doc
    python benchmarks/onnx_int8.py --export runs/x/export --side doc --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="export this checkpoint (with --onnx-int8) first")
    source.add_argument("--export", type=Path, help="an export folder that has onnx/<side>/model.int8.onnx")
    parser.add_argument("--side", default=None, help="the side that encodes both sentences (default: the first)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "senteval")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from eval.benchmarks.sts import STSBenchmark
    from eval.metrics import paired_cosine, spearman
    from models import DecoderEmbedder
    from serve.export import export
    from serve.onnx_export import OnnxSide

    torch.set_num_threads(args.threads)
    triples, _ = STSBenchmark(str(args.data), ["STSBenchmark"]).load("STSBenchmark")
    texts = sorted({t for a, b, _ in triples for t in (a, b)})
    position = {text: i for i, text in enumerate(texts)}
    gold = np.array([t[2] for t in triples])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = args.export
        if export_dir is None:
            export_dir = Path(tmp) / "export"
            started = time.perf_counter()
            export(args.checkpoint, export_dir, max_seq_length=args.max_length, onnx_int8=True)
            print(f"exported with --onnx-int8 in {time.perf_counter() - started:.0f} s", flush=True)
        info = json.loads((export_dir / "export.json").read_text())
        side = args.side or next(iter(info["sides"]))
        max_length = info["max_seq_length"]
        model = DecoderEmbedder.from_pretrained(export_dir).eval()
        runtimes = {
            "torch fp32 (DecoderEmbedder.encode)": lambda: model.encode(texts, side, max_length=max_length).numpy(),
            "onnxruntime fp32": lambda: OnnxSide(export_dir / "onnx" / side, threads=args.threads).encode(texts, 32),
            "onnxruntime int8": lambda: OnnxSide(export_dir / "onnx" / side, int8=True, threads=args.threads).encode(
                texts, 32
            ),
        }
        rows = {}
        for name, encode in runtimes.items():
            started = time.perf_counter()
            vectors = encode()
            seconds = time.perf_counter() - started
            a = vectors[[position[t[0]] for t in triples]]
            b = vectors[[position[t[1]] for t in triples]]
            rows[name] = {"vectors": vectors, "spearman": 100 * spearman(gold, paired_cosine(a, b)),
                          "texts_per_s": len(texts) / seconds}  # fmt: skip
            print(f"{name}: {rows[name]['spearman']:.2f} in {seconds:.0f} s", flush=True)
    reference = rows["torch fp32 (DecoderEmbedder.encode)"]
    lines = [f"STS-B test ({len(triples)} pairs, {len(texts)} sentences), side {side!r}, max_length {max_length}, "
             f"{args.threads} threads; load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}", "",
             "| runtime | Spearman x100 | drop vs torch | min / mean cosine to torch | texts/s |",
             "|---|---:|---:|---|---:|"]  # fmt: skip
    results = {}
    for name, row in rows.items():
        cosine = (row["vectors"] * reference["vectors"]).sum(axis=1)
        drop = reference["spearman"] - row["spearman"]
        lines.append(f"| {name} | {row['spearman']:.2f} | {drop:.2f} | {cosine.min():.4f} / {cosine.mean():.4f} | "
                     f"{row['texts_per_s']:.1f} |")  # fmt: skip
        results[name] = {"spearman": row["spearman"], "drop": drop, "min_cosine": float(cosine.min()),
                         "mean_cosine": float(cosine.mean()), "texts_per_s": row["texts_per_s"]}  # fmt: skip
    print("\n".join(lines))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

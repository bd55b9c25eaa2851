"""Serving throughput: our micro-batching server vs a naive per-request sentence-transformers FastAPI app.

Both serve the same model (ours from the export folder, the naive app from that folder's
sentence-transformers copy of the ``doc`` side), each in its own process on 127.0.0.1, one at a
time, measured in the same run. Each of C concurrent clients sends R single-text requests in a row
(``encoding_format: float`` for both); reported: requests/s over the whole level, and p50 / p99
latency per request, for C in 1, 8 and 32. The first answers of both servers are compared, so the
two apps are checked to compute the same embeddings.

Usage:
    python benchmarks/serve_throughput.py                          # SmolLM2-135M (untrained delimiters)
    python benchmarks/serve_throughput.py --model tiny --requests 5
    python benchmarks/serve_throughput.py --checkpoint runs/x/checkpoints/step-100 --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from serve.process import ServerProcess, free_port  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_MODEL = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
}  # fmt: skip
SIDES = {
    "query": {"open_token": "<|query|>", "close_token": "<|/query|>"},
    "doc": {"open_token": "<|doc|>", "close_token": "<|/doc|>"},
}
WORDS = (
    "embedding contrastive decoder token batch search query document code function return value list sort "
    "model server latency throughput python java string number array index vector similarity cosine train"
).split()
SERVED_NAME = "bench"


def texts(count: int, seed: int = 0, min_words: int = 8, max_words: int = 48) -> list[str]:
    """Deterministic pseudo-sentences of varying length."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(min_words, max_words))) for _ in range(count)]


# ---- the naive app ------------------------------------------------------------------------------


def naive_app(st_folder: str, torch_threads: int | None = None):
    """One ``SentenceTransformer.encode`` per request in FastAPI's thread pool: no queue, no batching."""
    import torch
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    if torch_threads is not None:
        torch.set_num_threads(torch_threads)

    model = SentenceTransformer(st_folder, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(body: dict) -> dict:
        items = [body["input"]] if isinstance(body["input"], str) else body["input"]
        vectors = model.encode(items, convert_to_numpy=True)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
            "model": body["model"],
        }

    return app


# ---- load generation ----------------------------------------------------------------------------


async def load(url: str, model: str, clients: int, requests: int, corpus: list[str]) -> dict:
    import httpx

    latencies: list[float] = []

    async def client(c: int, http: httpx.AsyncClient) -> None:
        for r in range(requests):
            text = corpus[(c * requests + r) % len(corpus)]
            start = time.perf_counter()
            response = await http.post(
                "/v1/embeddings", json={"model": model, "input": text, "encoding_format": "float"}
            )
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def first_vector(url: str, model: str, text: str) -> list[float]:
    import httpx

    response = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": text, "encoding_format": "float"})
    response.raise_for_status()
    return response.json()["data"][0]["embedding"]


def prepare(args: argparse.Namespace, workdir: Path) -> Path:
    """An export folder of the chosen model (a checkpoint, SmolLM2-135M, or a tiny random model)."""
    from models import DecoderEmbedder
    from serve.export import export

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = workdir / "checkpoint"
        if args.model == "tiny":
            model = DecoderEmbedder.build(None, SIDES, random_config=TINY_MODEL, seed=0)
        else:
            model = DecoderEmbedder.build(args.model, SIDES, seed=0)
        model.save_pretrained(checkpoint)
        del model
    out = workdir / "export"
    export(checkpoint, out, max_seq_length=args.max_length)
    return out


def run(args: argparse.Namespace) -> dict:
    corpus = texts(max(args.clients) * args.requests, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        export_dir = prepare(args, Path(tmp))
        info = json.loads((export_dir / "export.json").read_text())
        side = "doc" if "doc" in info["sides"] else next(iter(info["sides"]))
        print(f"exported in {time.perf_counter() - started:.1f} s; serving side {side!r}", flush=True)
        apps = {
            "ours": [
                "-m", "serve", "--model", str(export_dir), "--name", SERVED_NAME, "--log-level", "warning",
                "--max-batch-tokens", str(args.max_batch_tokens), "--max-wait-ms", str(args.max_wait_ms),
                "--max-length", str(args.max_length), "--torch-threads", str(args.torch_threads),
            ],
            "naive": [
                __file__, "naive-app", str(export_dir / info["sides"][side]), "--torch-threads", str(args.torch_threads)
            ],
        }  # fmt: skip
        results: dict = {
            "model": str(args.checkpoint or args.model),
            "side": side,
            "torch_threads": args.torch_threads,
            "requests_per_client": args.requests,
            "max_length": args.max_length,
            "levels": {},
        }
        firsts = {}
        for name, command in apps.items():
            port = free_port()
            server = ServerProcess([*command, "--port", str(port)], port)
            try:
                server.wait_ready()
                model_name = f"{SERVED_NAME}-{side}"
                firsts[name] = first_vector(server.url, model_name, corpus[0])
                asyncio.run(load(server.url, model_name, 2, 2, corpus))  # warm-up
                for clients in args.clients:
                    level = asyncio.run(load(server.url, model_name, clients, args.requests, corpus))
                    results["levels"].setdefault(str(clients), {})[name] = level
                    print(name, json.dumps(level), flush=True)
            finally:
                server.stop()
        diff = max(abs(a - b) for a, b in zip(firsts["ours"], firsts["naive"], strict=True))
        results["max_abs_diff_first_answer"] = diff
    return results


def table(results: dict) -> str:
    lines = [
        "| clients | ours req/s | naive req/s | speed-up | ours p50 / p99 ms | naive p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for clients, level in results["levels"].items():
        ours, naive = level["ours"], level["naive"]
        lines.append(
            f"| {clients} | {ours['requests_per_s']} | {naive['requests_per_s']} | "
            f"{ours['requests_per_s'] / naive['requests_per_s']:.2f}x | {ours['p50_ms']} / {ours['p99_ms']} | "
            f"{naive['p50_ms']} / {naive['p99_ms']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "naive-app":
        parser = argparse.ArgumentParser(prog="serve_throughput.py naive-app")
        parser.add_argument("st_folder")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--torch-threads", type=int, default=None)
        args = parser.parse_args(argv[1:])
        import uvicorn

        uvicorn.run(
            naive_app(args.st_folder, args.torch_threads), host="127.0.0.1", port=args.port, log_level="warning"
        )
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="'tiny' or a decoder for DecoderEmbedder.build")
    parser.add_argument("--checkpoint", default=None, help="benchmark this checkpoint instead of a fresh model")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=8, help="requests per client per level")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of both servers")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = run(args)
    print(table(results))
    print(f"max |ours - naive| on the first answer: {results['max_abs_diff_first_answer']:.2e}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

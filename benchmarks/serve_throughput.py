"""Serving throughput: our server beside infinity-emb and a naive per-request sentence-transformers app.

All three serve the same export (ours from the export folder, the others from that folder's
sentence-transformers copy of the ``doc`` side; infinity-emb 0.0.78 runs in the side virtualenv
of :mod:`serve.sidestack`, batch size 32), each in its own process on 127.0.0.1, one at a time,
in alternating rounds of one run; every server gets the same intra-op thread count. Each of C
concurrent clients sends R single-sentence requests in a row (STS-B test sentences, shuffled;
``encoding_format: float``). Reported per app and C in 1, 8, 32: the median requests/s over the
rounds (and its range), and p50 / p99 latency of the last round. The apps' answers for the same
sentences are compared (max |diff|), and the offline ``DecoderEmbedder.encode`` rate of those
sentences in this process (same threads), measured once per round beside the servers, is the
ceiling they are measured against. Last, the engine alone is timed on micro-batches of
``--engine-batches`` rows (packed, as the server runs them): where its rows/s stops rising is
where ``--return-wait-tokens`` should stop waiting on this machine.

Usage:
    python benchmarks/serve_throughput.py                          # SmolLM2-135M (untrained delimiters)
    python benchmarks/serve_throughput.py --apps ours ours-onnx infinity naive --rounds 2
    python benchmarks/serve_throughput.py --model tiny --requests 5 --apps ours naive
    python benchmarks/serve_throughput.py --checkpoint runs/x/checkpoints/step-100 --out results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
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
SERVED_NAME = "bench"
APPS = (
    "ours",
    "ours-chunks",
    "ours-noreturn",
    "ours-rwt256",
    "ours-onnx",
    "ours-bf16",
    "infinity",
    "infinity-bf16",
    "naive",
)
STSB_TEST = REPO_ROOT.parent / "shared" / "data" / "senteval" / "STS" / "STSBenchmark" / "sts-test.csv"


def sentences(count: int, seed: int = 1) -> list[str]:
    """``count`` STS-B test sentences (both columns, distinct, shuffled with ``seed``)."""
    path = Path(os.environ.get("CPT_DATA_DIR", STSB_TEST.parents[3])) / "senteval" / "STS" / "STSBenchmark"
    rows = [line.split("\t") for line in (path / "sts-test.csv").read_text(encoding="utf-8").splitlines()]
    texts = sorted({text.strip() for row in rows for text in row[5:7]})
    random.Random(seed).shuffle(texts)
    if count > len(texts):
        raise ValueError(f"asked for {count} sentences; {path / 'sts-test.csv'} has {len(texts)} distinct ones")
    return texts[:count]


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
    """C closed-loop clients on keep-alive connections, R requests each; rates, latencies, client CPU.

    The load generator is aiohttp: on the 2-core machine it shares with the server, httpx's client
    cost 4.6 ms of CPU per request against aiohttp's 0.3-0.9 ms (tiny model, 32 clients), CPU the
    server under test would otherwise lose. ``client_cpu_ms_per_request`` reports what it took.
    """
    import aiohttp

    latencies: list[float] = []

    async def client(c: int, http: aiohttp.ClientSession) -> None:
        for r in range(requests):
            text = corpus[(c * requests + r) % len(corpus)]
            start = time.perf_counter()
            body = {"model": model, "input": text, "encoding_format": "float"}
            async with http.post("/v1/embeddings", json=body) as response:
                await response.read()
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=600)
    cpu_started = time.process_time()
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(clients)))
        elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "client_cpu_ms_per_request": round(1000 * client_cpu / len(latencies), 2),
    }


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from ``/proc/stat``; (0, 0) where there is none (not Linux)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def measured_level(url: str, model: str, clients: int, requests: int, corpus: list[str]) -> dict:
    """:func:`load` plus the share of CPU time the hypervisor stole meanwhile (a shared VM's noise)."""
    steal_before, total_before = cpu_times()
    level = asyncio.run(load(url, model, clients, requests, corpus))
    steal_after, total_after = cpu_times()
    if total_after > total_before:
        level["cpu_steal"] = round((steal_after - steal_before) / (total_after - total_before), 3)
    return level


def embed(url: str, model: str, texts: list[str]) -> list[list[float]]:
    """One request per text (as the load does), so each app's answers are compared on its served path."""
    import httpx

    vectors = []
    for text in texts:
        response = httpx.post(f"{url}/embeddings", json={"model": model, "input": text, "encoding_format": "float"})
        response.raise_for_status()
        vectors.append(response.json()["data"][0]["embedding"])
    return vectors


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
    export(checkpoint, out, max_seq_length=args.max_length, onnx="ours-onnx" in args.apps)
    return out


@contextlib.contextmanager
def serving(
    app: str, export_dir: Path, st_folder: Path, side: str, args: argparse.Namespace, log_dir: Path
) -> Iterator[tuple[str, str]]:
    """Start ``app``; yield its base URL (``.../v1``) and the model name to ask for."""
    port = free_port()
    threads = str(args.torch_threads)
    if app.startswith("infinity"):
        from serve.sidestack import infinity_server

        dtype = "bfloat16" if app == "infinity-bf16" else "float32"
        log = log_dir / f"{app}.log"
        with infinity_server(
            st_folder, SERVED_NAME, port, batch_size=32, log=log, threads=args.torch_threads, dtype=dtype
        ) as url:
            yield url, SERVED_NAME
        return
    if app.startswith("ours"):
        backend = "onnx" if app == "ours-onnx" else "torch"
        precision = "bf16" if app == "ours-bf16" else "fp32"
        command = [
            "-m",
            "serve",
            "--model",
            str(export_dir),
            "--name",
            SERVED_NAME,
            "--log-level",
            "warning",
            "--access-log",
            "off",
            "--max-batch-tokens",
            str(args.max_batch_tokens),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--max-length",
            str(args.max_length),
            "--torch-threads",
            threads,
            "--backend",
            backend,
            "--precision",
            precision,
        ]
        if app == "ours-chunks":  # micro-batches in padded length chunks, as before packing was the default
            command += ["--pack-tokens", "0"]
        if app == "ours-noreturn":  # no wait for clients just answered, as before --return-wait-ms
            command += ["--return-wait-ms", "0"]
        if app == "ours-rwt256":  # stop waiting for returning clients at 256 real tokens, the default before 512
            command += ["--return-wait-tokens", "256"]
    else:
        command = [__file__, "naive-app", str(st_folder), "--torch-threads", threads]
    with (log_dir / f"{app}.log").open("w") as log:
        server = ServerProcess([*command, "--port", str(port)], port, log)
        try:
            server.wait_ready()
            yield f"{server.url}/v1", f"{SERVED_NAME}-{side}"
        finally:
            server.stop()


def offline_rates(
    export_dir: Path, side: str, corpus: list[str], args: argparse.Namespace, precisions: list[str]
) -> dict[str, float]:
    """Texts/s of ``DecoderEmbedder.encode`` on the corpus per precision, batch 32, same threads: the ceilings.

    ``bf16`` runs under ``torch.autocast`` as the server's ``--precision bf16`` does; the model is loaded once.
    """
    import torch

    from models import DecoderEmbedder
    from models.precision import inference_autocast

    torch.set_num_threads(args.torch_threads)
    model = DecoderEmbedder.from_pretrained(export_dir).eval()
    rates = {}
    for precision in precisions:
        with inference_autocast(precision):
            model.encode(corpus[:8], side, max_length=args.max_length)  # warm-up
            started = time.perf_counter()
            model.encode(corpus, side, batch_size=32, max_length=args.max_length)
        rates[precision] = round(len(corpus) / (time.perf_counter() - started), 2)
    return rates


CURVE_ROWS = 192  # a multiple of every default batch size, so each size times the same rows
CURVE_REPEATS = 2


def engine_curve(
    export_dir: Path, side: str, corpus: list[str], args: argparse.Namespace, precisions: list[str]
) -> dict[str, dict[str, dict]]:
    """Rows/s of the server's engine alone (packed, one forward call per batch) by micro-batch size, per precision.

    The corpus's first :data:`CURVE_ROWS` rows are cut into consecutive batches of each size in arrival order (as
    a micro-batch takes them), all sizes timed once per repeat in rotated order; reported: the median rows/s and
    the mean real tokens per batch, the figures that say where ``--return-wait-tokens`` stops paying on this
    machine.
    """
    import torch

    from serve import DEFAULT_PACK_TOKENS
    from serve.engine import EmbeddingEngine

    torch.set_num_threads(args.torch_threads)
    curves: dict[str, dict[str, dict]] = {}
    for precision in precisions:
        engine = EmbeddingEngine.from_folder(export_dir, max_length=args.max_length, precision=precision)
        engine.pack_tokens = DEFAULT_PACK_TOKENS
        rows = [engine.row(side, body) for body in engine.tokenize(corpus[:CURVE_ROWS])]
        engine.run(rows[:8])  # warm-up
        times: dict[int, list[float]] = {size: [] for size in args.engine_batches}
        for repeat in range(CURVE_REPEATS):
            shift = repeat % len(args.engine_batches)
            sizes = args.engine_batches[shift:] + args.engine_batches[:shift]
            for size in sizes:
                batches = [rows[i : i + size] for i in range(0, len(rows) - size + 1, size)]
                started = time.perf_counter()
                for batch in batches:
                    engine.run(batch)
                times[size].append(len(batches) * size / (time.perf_counter() - started))
        curves[precision] = {
            str(size): {
                "rows_per_s": round(statistics.median(rates), 2),
                "tokens_per_batch": round(size * statistics.mean(len(row.ids) for row in rows), 1),
            }
            for size, rates in times.items()
        }
        del engine
    return curves


def run(args: argparse.Namespace) -> dict:
    corpus = sentences(max(args.clients) * args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        export_dir = prepare(args, Path(tmp))
        info = json.loads((export_dir / "export.json").read_text())
        side = "doc" if "doc" in info["sides"] else next(iter(info["sides"]))
        st_folder = export_dir / info["sides"][side]
        print(f"exported in {time.perf_counter() - started:.1f} s; serving side {side!r}", flush=True)
        results: dict = {
            "model": str(args.checkpoint or args.model),
            "side": side,
            "torch_threads": args.torch_threads,
            "requests_per_client": args.requests,
            "max_length": args.max_length,
            "rounds": args.rounds,
            "load_before": os.getloadavg(),
            "levels": {},
            "answers_max_abs_diff": {},
        }
        check_texts = corpus[:8]
        precisions = ["fp32", "bf16"] if "ours-bf16" in args.apps else ["fp32"]
        results["offline_rounds"] = []  # the ceiling, measured once per round beside the servers
        answers: dict[str, list] = {}
        for round_index in range(args.rounds):
            apps = args.apps if round_index % 2 == 0 else list(reversed(args.apps))
            for app in apps:
                with serving(app, export_dir, st_folder, side, args, Path(tmp)) as (url, model):
                    if app not in answers:
                        answers[app] = embed(url, model, check_texts)
                    asyncio.run(load(url.removesuffix("/v1"), model, 2, 2, corpus))  # warm-up
                    for clients in args.clients:
                        level = measured_level(url.removesuffix("/v1"), model, clients, args.requests, corpus)
                        runs = results["levels"].setdefault(str(clients), {}).setdefault(app, [])
                        runs.append(level)
                        print(f"round {round_index + 1} {app}", json.dumps(level), flush=True)
            offline = offline_rates(export_dir, side, corpus, args, precisions)
            results["offline_rounds"].append(offline)
            print(f"round {round_index + 1} offline encode texts/s", json.dumps(offline), flush=True)
        reference = answers[args.apps[0]]
        for app, vectors in answers.items():
            diff = max(abs(a - b) for u, v in zip(vectors, reference, strict=True) for a, b in zip(u, v, strict=True))
            results["answers_max_abs_diff"][app] = diff
        for precision, key in (("fp32", "offline_encode_texts_per_s"), ("bf16", "offline_encode_bf16_texts_per_s")):
            if precision in precisions:
                results[key] = statistics.median(offline[precision] for offline in results["offline_rounds"])
        if args.engine_batches:
            served = sorted({"bf16" if app == "ours-bf16" else "fp32" for app in args.apps if app.startswith("ours")})
            results["engine_rows_per_s"] = engine_curve(export_dir, side, corpus, args, served)
        results["load_after"] = os.getloadavg()
    return results


def summary(runs: list[dict]) -> dict:
    rates = [run["requests_per_s"] for run in runs]
    return {
        "median": round(statistics.median(rates), 2),
        "low": min(rates),
        "high": max(rates),
        "p50_ms": runs[-1]["p50_ms"],
        "p99_ms": runs[-1]["p99_ms"],
    }


def table(results: dict) -> str:
    apps = list(next(iter(results["levels"].values())))
    ceiling = results["offline_encode_texts_per_s"]
    ours = [app for app in apps if app.startswith("ours")]
    # ours-bf16 is set against infinity-bf16 when both ran; every other app of ours against infinity
    peer = {app: "infinity-bf16" if app == "ours-bf16" and "infinity-bf16" in apps else "infinity" for app in ours}
    header = " | ".join(f"{app} req/s (p50 / p99 ms)" for app in apps)
    ratios = " | ".join(f"{app} / {peer[app]} | {app} / offline encode" for app in ours)
    lines = [f"| clients | {header} | {ratios} |", "|---|" + "---|" * (len(apps) + 2 * len(ours))]
    for clients, level in results["levels"].items():
        cells, medians = [], {}
        for app in apps:
            s = summary(level[app])
            medians[app] = s["median"]
            spread = f" [{s['low']}-{s['high']}]" if len(level[app]) > 1 else ""
            cells.append(f"{s['median']}{spread} ({s['p50_ms']} / {s['p99_ms']})")
        for app in ours:
            cells.append(f"{medians[app] / medians[peer[app]]:.2f}x" if peer[app] in medians else "-")
            own_ceiling = results.get("offline_encode_bf16_texts_per_s", ceiling) if app == "ours-bf16" else ceiling
            cells.append(f"{medians[app] / own_ceiling:.0%}")
        lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    diffs = ", ".join(f"{a} {d:.1e}" for a, d in results.get("answers_max_abs_diff", {}).items()) or "not recorded"
    lines.append("")
    lines.append(
        f"offline DecoderEmbedder.encode of the same sentences: {ceiling} texts/s"
        + (
            f" (bf16 autocast: {results['offline_encode_bf16_texts_per_s']}, the ceiling of ours-bf16)"
            if "offline_encode_bf16_texts_per_s" in results
            else ""
        )
        + "; "
        f"answers' max |diff| to {apps[0]}: {diffs}"
    )
    offline_rounds = results.get("offline_rounds", [])
    if len(offline_rounds) > 1:
        top = max(results["levels"], key=int)
        per_round = []
        for app in ours:
            precision = "bf16" if app == "ours-bf16" else "fp32"
            shares = [
                run["requests_per_s"] / offline[precision]
                for run, offline in zip(results["levels"][top][app], offline_rounds, strict=True)
            ]
            per_round.append(f"{app} " + " / ".join(f"{share:.0%}" for share in shares))
        lines.append(
            "offline encode per round (fp32): " + ", ".join(str(offline["fp32"]) for offline in offline_rounds)
            + f" texts/s; at {top} clients each round against its own: " + "; ".join(per_round)
        )  # fmt: skip
    client_cpu = [
        run["client_cpu_ms_per_request"]
        for level in results["levels"].values()
        for runs in level.values()
        for run in runs
        if "client_cpu_ms_per_request" in run
    ]
    if client_cpu:
        lines.append(
            f"load generator (aiohttp, this process) CPU per request: median {statistics.median(client_cpu):.2f} ms "
            f"[{min(client_cpu):.2f}-{max(client_cpu):.2f}]"
        )
    steal = [run["cpu_steal"] for level in results["levels"].values() for runs in level.values() for run in runs
             if "cpu_steal" in run]  # fmt: skip
    if steal:
        lines.append(
            f"CPU time stolen by the hypervisor during the levels: median {statistics.median(steal):.1%} "
            f"[{min(steal):.1%}-{max(steal):.1%}]"
        )
    for precision, curve in results.get("engine_rows_per_s", {}).items():
        lines.append(
            f"engine alone ({precision}, packed, one call per batch), rows/s by batch rows (real tokens): "
            + ", ".join(
                f"{size}: {point['rows_per_s']} ({point['tokens_per_batch']:.0f})" for size, point in curve.items()
            )
        )
    if "load_before" in results and "load_after" in results:
        lines.append(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
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
    parser.add_argument("--torch-threads", type=int, default=2, help="intra-op threads of every server")
    parser.add_argument("--apps", nargs="+", choices=APPS, default=["ours", "infinity", "naive"])
    parser.add_argument(
        "--engine-batches",
        type=int,
        nargs="*",
        default=[8, 16, 24, 32, 48, 64],
        help="after the servers, time the engine alone (each precision of ours served) on micro-batches of these "
        "many rows (none: skip)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="each app once per round, order alternating")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--report", type=Path, default=None, help="only print the table of a saved --out file")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(table(json.loads(args.report.read_text())))
        return
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

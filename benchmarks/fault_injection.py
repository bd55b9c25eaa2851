"""Fault injection against a real server and real training runs: the figures of docs/serving.md's Reliability.

Everything on the tiny random tower of the tests, 127.0.0.1 only, in one run:

1. **bad requests**: a hand-made set (wrong types, limits, surrogates, malformed JSON, unknown
   model and route, wrong method, missing key, an oversized body); each must get a 4xx with the
   OpenAI error body, and a valid request on the same keep-alive connection must then succeed;
2. **work before limits**: the time to refuse a 5 MB string and 2048 x 8 KB strings, the server's
   RSS after them, and p50 / p99 of small requests alone and beside a 2048-input request;
3. **load**: 32 clients x 20 requests, p50 / p99, RSS before and after, every answer equal to the
   single-request answer;
4. **SIGTERM under load**: 16 clients sending, SIGTERM: how many requests were answered 200, how
   many failed, and how long the exit took;
5. **kill -9 during training**: runs that checkpoint every step and keep 2 are killed at random
   moments (while writing and while pruning); after each kill every checkpoint left must be
   complete or absent, and ``resume=auto`` must finish the run;
6. **bad data** (``benchmarks/fault_injection_data.py``, its own table): each bad-data case of
   issue 41 through the training CLI, memory-mapped and streamed (``--skip-data`` leaves it out).

Usage:
    python benchmarks/fault_injection.py                 # about 5 min on 2 cores
    python benchmarks/fault_injection.py --kills 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from serve.process import ServerProcess, free_port  # noqa: E402

KEY = "fault-injection-key"
MODEL = "tiny-doc"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_exchange(port: int, requests: list[bytes], timeout: float = 60) -> list[tuple[int, bytes]]:
    """Send requests one after the other on ONE keep-alive connection; (status, body) of each answer."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", 0)))
            out.append((status, body))
            if headers.get("connection") == "close":
                break
    return out


def http_request(method: str, path: str, body: bytes = b"", key: str | None = KEY, length: int | None = None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    size = len(body) if length is None else length
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {size}\r\n\r\n").encode() + body  # fmt: skip


def bad_requests() -> list[tuple[str, bytes]]:
    def payload(value: object) -> bytes:
        return http_request("POST", "/v1/embeddings", json.dumps(value).encode())

    cases = [
        ("empty string", {"input": "", "model": MODEL}),
        ("empty list", {"input": [], "model": MODEL}),
        ("2049 items", {"input": ["x"] * 2049, "model": MODEL}),
        ("8193 token ids", {"input": [5] * 8193, "model": MODEL}),
        ("token id -1", {"input": [[1, -1]], "model": MODEL}),
        ("token id 1.0", {"input": [1.0], "model": MODEL}),
        ("token id true", {"input": [True], "model": MODEL}),
        ("token ids [1, '2']", {"input": [1, "2"], "model": MODEL}),
        ("dimensions 2.0", {"input": "hi", "model": MODEL, "dimensions": 2.0}),
        ("dimensions '8'", {"input": "hi", "model": MODEL, "dimensions": "8"}),
        ("dimensions 0", {"input": "hi", "model": MODEL, "dimensions": 0}),
        ("encoding int8", {"input": "hi", "model": MODEL, "encoding_format": "int8"}),
        ("no model", {"input": "hi"}),
        ("unknown model", {"input": "hi", "model": "nope"}),
        ("input a number", {"input": 5, "model": MODEL}),
    ]
    out = [(name, payload(value)) for name, value in cases]
    out += [
        ("lone surrogate", http_request("POST", "/v1/embeddings", b'{"input": "a\\ud800b", "model": "tiny-doc"}')),
        ("malformed JSON", http_request("POST", "/v1/embeddings", b'{"input": "a", "model"')),
        ("unknown route", http_request("GET", "/v2/nothing")),
        ("wrong method", http_request("DELETE", "/v1/embeddings")),
        ("no key", http_request("POST", "/v1/embeddings", b'{"input": "a", "model": "tiny-doc"}', key=None)),
        ("wrong key", http_request("POST", "/v1/embeddings", b'{"input": "a", "model": "tiny-doc"}', key="no")),
        ("50 MB declared", http_request("POST", "/v1/embeddings", b"{", length=50_000_000)),
    ]
    return out


def check_bad_requests(port: int) -> dict:
    valid = http_request("POST", "/v1/embeddings", json.dumps({"input": "hello", "model": MODEL}).encode())
    failures, connection_lost = [], 0
    cases = bad_requests()
    for name, request in cases:
        answers = raw_exchange(port, [request, valid])
        status, body = answers[0]
        error = json.loads(body or b"{}").get("error", {})
        if not 400 <= status < 500 or set(error) != {"message", "type", "param", "code"}:
            failures.append(f"{name}: {status} {body[:80]!r}")
        if len(answers) == 2 and answers[1][0] != 200:
            failures.append(f"{name}: the next request got {answers[1][0]}")
        if len(answers) == 1:  # the server closed the connection on purpose (413, 401 with a body)
            connection_lost += 1
    return {"cases": len(cases), "failures": failures, "closed_on_purpose": connection_lost}


async def timed_posts(url: str, payloads: list[dict], clients: int) -> list[float]:
    import httpx

    latencies: list[float] = []
    queue = list(payloads)

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            payload = queue.pop()
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/embeddings", json=payload, headers={"Authorization": f"Bearer {KEY}"})
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{1000 * statistics.median(ordered):.1f} / {1000 * p99:.1f}"


def work_before_limits(server: ServerProcess, port: int) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    out = {}
    with httpx.Client(timeout=600) as http:
        cases = (("5 MB string", "a" * 5_000_000), ("2048 x 8 KB", ["word " * 1600] * 2048),
                 ("2048 x 4 KB", ["word " * 800] * 2048))  # fmt: skip
        for name, value in cases:
            started = time.perf_counter()
            response = http.post(f"{server.url}/v1/embeddings", json={"input": value, "model": MODEL}, headers=headers)
            out[name] = {"status": response.status_code, "ms": round(1000 * (time.perf_counter() - started), 1),
                         "code": response.json()["error"]["code"] if response.status_code != 200 else None}  # fmt: skip
    out["rss_after_mib"] = round(rss_mib(server.proc.pid), 1)
    small = [{"input": "hello there", "model": MODEL}] * 100
    out["small_alone_ms"] = percentiles(asyncio.run(timed_posts(server.url, small, 4)))
    large = {"input": [f"a longer text number {i} " * 4 for i in range(2048)], "model": MODEL}  # ~200k tokens

    async def beside() -> tuple[list[float], float]:
        big = asyncio.create_task(timed_posts(server.url, [large], 1))
        await asyncio.sleep(0.3)  # the large request is being tokenized and run
        latencies = await timed_posts(server.url, small, 4)
        return latencies, (await big)[0]

    latencies, large_s = asyncio.run(beside())
    out["small_beside_2048_ms"] = percentiles(latencies)
    out["large_s"] = round(large_s, 2)
    return out


def load(server: ServerProcess) -> dict:
    import httpx
    import numpy as np

    texts = [f"query number {i} about sorting lists" for i in range(20)]
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=600) as http:
        single = {}
        for text in texts:
            response = http.post(f"{server.url}/v1/embeddings", json={"input": text, "model": MODEL}, headers=headers)
            single[text] = response.json()["data"][0]["embedding"]
    before = rss_mib(server.proc.pid)
    answers: list[tuple[str, list[float]]] = []

    async def main() -> list[float]:
        latencies = []

        async def client(http: httpx.AsyncClient) -> None:
            for text in texts:
                started = time.perf_counter()
                response = await http.post(f"{server.url}/v1/embeddings", json={"input": text, "model": MODEL},
                                           headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
                latencies.append(time.perf_counter() - started)
                answers.append((text, response.json()["data"][0]["embedding"]))

        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
            await asyncio.gather(*(client(http) for _ in range(32)))
        return latencies

    latencies = asyncio.run(main())
    worst = max(float(np.abs(np.array(v) - np.array(single[t])).max()) for t, v in answers)
    return {"requests": len(answers), "p50_p99_ms": percentiles(latencies), "rss_before_mib": round(before, 1),
            "rss_after_mib": round(rss_mib(server.proc.pid), 1), "max_diff": worst}  # fmt: skip


def sigterm_under_load(checkpoint: Path, work: Path) -> dict:
    import httpx

    port = free_port()
    server = start_server(checkpoint, port, work / "sigterm.log")
    counts = {"ok": 0, "refused_503": 0, "connection_errors": 0, "other": 0}

    headers = {"Authorization": f"Bearer {KEY}"}

    async def main() -> float:
        stop = asyncio.Event()

        async def client(http: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    payload = {"input": "hello " * 40, "model": MODEL}
                    response = await http.post(f"{server.url}/v1/embeddings", json=payload, headers=headers)
                    key = (
                        "ok"
                        if response.status_code == 200
                        else "refused_503"
                        if response.status_code == 503
                        else "other"
                    )
                    counts[key] += 1
                except httpx.TransportError:
                    counts["connection_errors"] += 1
                    await asyncio.sleep(0.05)

        async with httpx.AsyncClient(timeout=60) as http:
            tasks = [asyncio.create_task(client(http)) for _ in range(16)]
            await asyncio.sleep(2.0)
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            while server.proc.poll() is None and time.monotonic() - started < 60:
                await asyncio.sleep(0.02)
            took = time.monotonic() - started
            stop.set()
            await asyncio.gather(*tasks)
        return took

    took = asyncio.run(main())
    return {**counts, "exit_s": round(took, 2), "returncode": server.proc.returncode}


def start_server(checkpoint: Path, port: int, log_path: Path) -> ServerProcess:
    args = ["-m", "serve", "--model", str(checkpoint), "--name", "tiny", "--port", str(port), "--api-key-env",
            "FAULT_KEY", "--log-level", "warning"]  # fmt: skip
    os.environ["FAULT_KEY"] = KEY
    server = ServerProcess(args, port, log=log_path.open("w"))
    server.wait_ready(300)
    return server


def kill_training(work: Path, kills: int, seed: int) -> dict:
    """Kill -9 tiny training runs at random moments; check what is left and that resume finishes."""
    from models.manifest import is_complete

    data = work / "pairs.jsonl"
    words = "sort a list of numbers by key value and return the result quickly".split()
    rng = random.Random(seed)
    rows = [{"x": " ".join(rng.sample(words, 5)), "y": " ".join(rng.sample(words, 6))} for _ in range(64)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = [sys.executable, "train/contrastive.py", "model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl",
            f"data.path={data}", "trainer.steps=40", "trainer.batch_size=8", "trainer.checkpoint_every=1",
            "trainer.keep_checkpoints=2"]  # fmt: skip
    results = {"kills": 0, "incomplete_left": 0, "resume_failures": 0, "finished": 0}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(kills):
        run_dir = work / f"run-{trial}"
        command = [*base, f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (run_dir / "checkpoints").is_dir() and proc.poll() is None:  # wait for the first checkpoint
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        results["kills"] += 1
        steps = [p for p in (run_dir / "checkpoints").glob("step-*")]
        results["incomplete_left"] += sum(not is_complete(p) for p in steps)
        resumed = subprocess.run([*command, "resume=auto"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if resumed.returncode != 0 or not is_complete(run_dir / "checkpoints" / "step-000040"):
            results["resume_failures"] += 1
        else:
            results["finished"] += 1
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-data", action="store_true", help="leave out the bad-data cases")
    args = parser.parse_args()
    from models import DecoderEmbedder
    from tests.conftest import TINY_LLAMA, TWO_SIDES

    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        checkpoint = work / "ckpt"
        DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).save_pretrained(checkpoint)
        port = free_port()
        server = start_server(checkpoint, port, work / "server.log")
        try:
            bad = check_bad_requests(port)
            limits = work_before_limits(server, port)
            loaded = load(server)
            alive = server.proc.poll() is None
        finally:
            server.stop()
        sigterm = sigterm_under_load(checkpoint, work)
        killed = kill_training(work, args.kills, args.seed)
    five, many, half = limits["5 MB string"], limits["2048 x 8 KB"], limits["2048 x 4 KB"]
    sent = sum(v for k, v in sigterm.items() if k not in ("exit_s", "returncode"))
    rows = [
        ("hand-made bad requests, each followed by a valid one on the same connection", bad["cases"],
         len(bad["failures"]), 0 if alive else 1,
         f"{bad['closed_on_purpose']} connections closed on purpose (413 unread, 401 with a body)"),
        ("a 5 MB string", 1, int(five["status"] != 400), 0, f"{five['status']} {five['code']} in {five['ms']} ms"),
        ("2048 x 8 KB strings (16.4 MB body)", 1, int(many["status"] != 413), 0,
         f"{many['status']} {many['code']} in {many['ms']} ms"),
        ("2048 x 4 KB strings (8.2 MB body)", 1, int(half["status"] != 400), 0,
         f"{half['status']} {half['code']} in {half['ms']} ms; RSS after these three: {limits['rss_after_mib']} MiB"),
        ("small requests alone, then beside a 2048-input request (p50 / p99 ms)", 200, 0, 0,
         f"{limits['small_alone_ms']} vs {limits['small_beside_2048_ms']} (2048 inputs: {limits['large_s']} s)"),
        ("load: 32 clients x 20 requests", loaded["requests"], int(loaded["max_diff"] > 1e-5), 0,
         f"p50 / p99 {loaded['p50_p99_ms']} ms; RSS {loaded['rss_before_mib']} -> {loaded['rss_after_mib']} MiB; "
         f"max diff to the single answer {loaded['max_diff']:.1e}"),
        ("SIGTERM under load (16 clients)", sent, sigterm["other"], 0,
         f"{sigterm['ok']} answered 200, {sigterm['refused_503']} refused 503 while stopping, "
         f"{sigterm['connection_errors']} connections refused after SIGTERM; exit {sigterm['exit_s']} s "
         f"(code {sigterm['returncode']})"),
        ("kill -9 during training (a checkpoint every step, keep 2)", killed["kills"],
         killed["incomplete_left"] + killed["resume_failures"], 0,
         f"incomplete checkpoints left: {killed['incomplete_left']}; resumed to the end: {killed['finished']}"),
    ]  # fmt: skip
    print("| check | cases | failures | crashes | figures |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    if bad["failures"]:
        print("\nfailures:", *bad["failures"], sep="\n  ")
    if not args.skip_data:
        sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
        from fault_injection_data import print_table, run_data_cases

        print("\n## Bad data through the training CLI\n")
        with tempfile.TemporaryDirectory() as folder:
            print_table(run_data_cases(Path(folder)))
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

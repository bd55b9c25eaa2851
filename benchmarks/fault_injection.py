"""Fault injection against real servers and real training runs: the figures of docs/serving_measurements.md.

Every case is registered in :data:`CASES` (``@case``) and prints one row: what was tried, how many
tries, failures, whether the server crashed, and its figures. Server cases run on 127.0.0.1 against
``python -m serve`` subprocesses serving a tower (default: the tiny random decoder of the tests with
SmolLM2's real tokenizer, so text limits are the real ones; ``--tower CKPT`` serves a trained one):

- **bad requests**: a hand-made set (wrong types, ``59.0`` as a token id, limits, surrogates,
  malformed JSON, unknown model and route, a 1 MB model name, a trailing slash with a foreign
  ``Host``, wrong method, missing key, an oversized body); each must get a 4xx with OpenAI's error
  body (short, not echoing the input), and a valid request on the same keep-alive connection must
  then succeed;
- **oversized text**: 14 texts just under the per-text character bound (9.3 MB of digits), alone
  and three at once: time to the 400, the server's CPU seconds and its RSS (peak and after);
- **work before limits**: a 5 MB string, 2048 x 8 KB and 2048 x 4 KB strings; small requests
  alone and beside a 2048-input request;
- **a client that disconnects**: 2048 inputs, the connection closed while they run: rows computed
  after it left, and the status the server counted;
- **SIGTERM while a 2048-input request runs**: what that client gets, and how long the exit takes
  against the 5 s grace; **SIGTERM under load**: 16 clients sending;
- **the key before any body**: 40 slow 9.5 MB uploads to a path outside ``/v1``: statuses and RSS;
  ``/docs``, ``/redoc``, ``/openapi.json``, ``/metrics`` without the key, and CDN scripts;
- **slow headers**: a request line and half the headers, then nothing;
- **load**: 32 clients x 20 requests, every answer equal to the single-request answer;
- **kill -9 during training**: runs that checkpoint every step and keep 2 are killed at random
  moments; every checkpoint left must be complete or absent, and ``resume=auto`` must finish;
- **bad data** (``benchmarks/fault_injection_data.py``, its own table; ``--skip-data``).

To add a case: write ``def my_case(ctx: Context) -> Result`` under ``@case("what it tries")``.

Usage:
    python benchmarks/fault_injection.py                   # about 8 min on 2 cores
    python benchmarks/fault_injection.py --only "slow headers" --only "bad requests"
    python benchmarks/fault_injection.py --tower runs/similarity/checkpoints/step-000060 --skip-training
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from serve.process import ServerProcess, free_port  # noqa: E402

KEY = "fault-injection-key"


# ---- the registry -------------------------------------------------------------------------------


@dataclass
class Result:
    """One case's row: tries, what failed (one line each), whether a server died, and the figures."""

    tries: int
    failures: list[str] = field(default_factory=list)
    figures: str = ""
    crashed: bool = False


@dataclass
class Context:
    """What every case may use: a scratch folder, the tower served, the shared keyed server, the options."""

    work: Path
    tower: Path
    model: str  # the served model name requests use
    args: argparse.Namespace
    server: ServerProcess | None = None

    def slow_rows(self) -> tuple[str, ...]:
        """Server flags that make 2048 short inputs take seconds: one row per forward call on the tiny tower
        (a trained tower takes long enough with the defaults, and then a forward call outlasts the grace)."""
        return () if self.args.tower else ("--max-batch-size", "1", "--max-wait-ms", "0")

    def start(self, label: str, *extra: str) -> ServerProcess:
        """``python -m serve`` on the tower with the key, on a free port, logging to ``work/label.log``."""
        port = free_port()
        arguments = ["-m", "serve", "--model", str(self.tower), "--name", "tower", "--port", str(port),
                     "--api-key-env", "FAULT_KEY", "--log-level", "warning", *extra]  # fmt: skip
        os.environ["FAULT_KEY"] = KEY
        server = ServerProcess(arguments, port, log=(self.work / f"{label}.log").open("w"))
        server.wait_ready(600)
        server.port = port  # type: ignore[attr-defined]
        return server


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Context], Result]
    group: str  # "server": uses ctx.server; "own": starts what it needs


CASES: list[Case] = []


def case(name: str, group: str = "server") -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register ``run`` as a case named ``name``, run in registration order."""

    def register(run: Callable[[Context], Result]) -> Callable[[Context], Result]:
        CASES.append(Case(name, run, group))
        return run

    return register


# ---- measuring a server -------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Samples a process's RSS every 20 ms in a thread while the ``with`` block runs; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss_mib(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's ``/metrics`` (0 when absent)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=60).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def http_request(method: str, path: str, body: bytes = b"", key: str | None = KEY, length: int | None = None,
                 host: str = "x") -> bytes:  # fmt: skip
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    size = len(body) if length is None else length
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {size}\r\n\r\n").encode() + body  # fmt: skip


def read_answer(reader) -> tuple[int, dict[str, str], bytes]:
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, reader.read(int(headers.get("content-length", 0)))


def raw_exchange(port: int, requests: list[bytes], timeout: float = 60) -> list[tuple[int, dict[str, str], bytes]]:
    """Send requests one after the other on ONE keep-alive connection; (status, headers, body) of each answer."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            out.append(read_answer(reader))
            if out[-1][1].get("connection") == "close":
                break
    return out


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{1000 * statistics.median(ordered):.1f} / {1000 * p99:.1f}"


# ---- the cases ----------------------------------------------------------------------------------


def bad_requests(model: str) -> list[tuple[str, bytes, Callable[[int, dict, bytes], str | None]]]:
    """(name, raw request, extra check of (status, headers, body) -> a failure or None)."""

    def payload(value: object, **options: object) -> bytes:
        return http_request("POST", "/v1/embeddings", json.dumps(value).encode(), **options)

    def short(status: int, headers: dict, body: bytes) -> str | None:
        return None if len(body) < 1024 else f"a {len(body)}-byte error body (echoed input?)"

    def no_redirect(status: int, headers: dict, body: bytes) -> str | None:
        return None if "location" not in headers else f"redirected to {headers['location']}"

    fine = [
        ("empty string", {"input": "", "model": model}), ("empty list", {"input": [], "model": model}),
        ("2049 items", {"input": ["x"] * 2049, "model": model}),
        ("8193 token ids", {"input": [5] * 8193, "model": model}),
        ("token id -1", {"input": [[1, -1]], "model": model}), ("token id 1.0", {"input": [1.0], "model": model}),
        ("token id 59.0 after 59", {"input": [59, 59.0], "model": model}),
        ("token id 59.0 in an array", {"input": [[59], [59.0]], "model": model}),
        ("token id true", {"input": [True], "model": model}),
        ("token ids [1, '2']", {"input": [1, "2"], "model": model}),
        ("dimensions 2.0", {"input": "hi", "model": model, "dimensions": 2.0}),
        ("dimensions '8'", {"input": "hi", "model": model, "dimensions": "8"}),
        ("dimensions 0", {"input": "hi", "model": model, "dimensions": 0}),
        ("encoding int8", {"input": "hi", "model": model, "encoding_format": "int8"}),
        ("no model", {"input": "hi"}), ("unknown model", {"input": "hi", "model": "nope"}),
        ("input a number", {"input": 5, "model": model}),
    ]  # fmt: skip
    cases = [(name, payload(value), short) for name, value in fine]
    good = json.dumps({"input": "a", "model": model}).encode()
    cases += [
        ("1 MB model name", payload({"input": "hi", "model": "m" * 1_000_000}), short),
        ("dimensions of 4,000 digits", payload({"input": "hi", "model": model, "dimensions": 10**3999}), short),
        ("trailing slash, Host evil.example", http_request("POST", "/v1/embeddings/", good, host="evil.example"),
         no_redirect),
        ("lone surrogate", http_request("POST", "/v1/embeddings", b'{"input": "a\\ud800b", "model": "x"}'), short),
        ("malformed JSON", http_request("POST", "/v1/embeddings", b'{"input": "a", "model"'), short),
        ("unknown route", http_request("GET", "/v2/nothing"), short),
        ("wrong method", http_request("DELETE", "/v1/embeddings"), short),
        ("no key", http_request("POST", "/v1/embeddings", good, key=None), short),
        ("wrong key", http_request("POST", "/v1/embeddings", good, key="no"), short),
        ("50 MB declared", http_request("POST", "/v1/embeddings", b"{", length=50_000_000), short),
    ]  # fmt: skip
    return cases


@case("hand-made bad requests, each followed by a valid one on the same connection")
def check_bad_requests(ctx: Context) -> Result:
    valid = http_request("POST", "/v1/embeddings", json.dumps({"input": "hello", "model": ctx.model}).encode())
    result, closed = Result(0), 0
    for name, request, check in bad_requests(ctx.model):
        result.tries += 1
        answers = raw_exchange(ctx.server.port, [request, valid])
        status, headers, body = answers[0]
        error = json.loads(body or b"{}").get("error", {}) if body.startswith(b"{") else {}
        problem = check(status, headers, body)
        if not 400 <= status < 500 or set(error) != {"message", "type", "param", "code"} or problem:
            result.failures.append(f"{name}: {status} {problem or body[:80]!r}")
        if len(answers) == 2 and answers[1][0] != 200:
            result.failures.append(f"{name}: the next request got {answers[1][0]}")
        closed += len(answers) == 1  # the server closed the connection on purpose (413, 401 with a body)
    result.figures = f"{closed} connections closed on purpose (a body left unread)"
    return result


def digits_request(max_chars_per_token: int, model: str) -> bytes:
    from serve.schemas import MAX_TOKENS_PER_ITEM

    text = "7" * (MAX_TOKENS_PER_ITEM * max_chars_per_token - 1)  # just under the per-text character bound
    return json.dumps({"input": [text] * 14, "model": model}).encode()


@case("14 texts of digits just under the per-text character bound, alone then 3 at once")
def oversized_text(ctx: Context) -> Result:
    import httpx

    body = digits_request(ctx.args.max_chars_per_token, ctx.model)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    server, result = ctx.server, Result(4)
    before, cpu_before = rss_mib(server.proc.pid), cpu_s(server.proc.pid)
    with PeakRss(server.proc.pid) as alone:
        started = time.perf_counter()
        response = httpx.post(f"{server.url}/v1/embeddings", content=body, headers=headers, timeout=600)
        seconds = time.perf_counter() - started
    cpu = cpu_s(server.proc.pid) - cpu_before

    def one() -> int:
        return httpx.post(f"{server.url}/v1/embeddings", content=body, headers=headers, timeout=600).status_code

    with PeakRss(server.proc.pid) as together:
        threads = [threading.Thread(target=lambda: statuses.append(one())) for _ in range(3)]
        statuses: list[int] = []
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    after = rss_mib(server.proc.pid)
    for status in [response.status_code, *statuses]:
        if status != 400:
            result.failures.append(f"answered {status}, not 400")
    if cpu > 5 or together.peak - before > 1024:
        result.failures.append(f"{cpu:.1f} CPU s for one refusal, RSS peak +{together.peak - before:.0f} MiB")
    alone_said = f"400 in {seconds:.2f} s, {cpu:.2f} CPU s, RSS {before:.0f} -> peak {alone.peak:.0f} MiB"
    result.figures = (f"{len(body) / 1e6:.1f} MB body: {alone_said}; 3 at once: peak {together.peak:.0f}, "
                      f"after {after:.0f} MiB")  # fmt: skip
    return result


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


@case("a 5 MB string, 2048 x 8 KB and 2048 x 4 KB strings, and small requests beside a 2048-input one")
def work_before_limits(ctx: Context) -> Result:
    import httpx

    server, result = ctx.server, Result(3 + 200)
    cases = (("5 MB string", "a" * 5_000_000, 400), ("2048 x 8 KB", ["word " * 1600] * 2048, 413),
             ("2048 x 4 KB", ["word " * 800] * 2048, 400))  # fmt: skip
    figures = []
    with httpx.Client(timeout=600) as http:
        for name, value, want in cases:
            started = time.perf_counter()
            response = http.post(f"{server.url}/v1/embeddings", json={"input": value, "model": ctx.model},
                                 headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            figures.append(f"{name}: {response.status_code} in {1000 * (time.perf_counter() - started):.0f} ms")
            if response.status_code != want:
                result.failures.append(f"{name}: {response.status_code}, not {want}")
    small = [{"input": "hello there", "model": ctx.model}] * 100
    alone = percentiles(asyncio.run(timed_posts(server.url, small, 4)))
    large = {"input": [f"a longer text number {i} " * 4 for i in range(2048)], "model": ctx.model}

    async def beside() -> tuple[list[float], float]:
        big = asyncio.create_task(timed_posts(server.url, [large], 1))
        await asyncio.sleep(0.3)  # the large request is being tokenized and run
        latencies = await timed_posts(server.url, small, 4)
        return latencies, (await big)[0]

    latencies, large_s = asyncio.run(beside())
    beside_said = f"{percentiles(latencies)} ms beside 2048 inputs ({large_s:.1f} s)"
    result.figures = (f"{'; '.join(figures)}; RSS after {rss_mib(server.proc.pid):.0f} MiB; small requests p50 / "
                      f"p99 {alone} ms alone, {beside_said}")  # fmt: skip
    return result


def send_and_leave(port: int, body: bytes, leave_after_s: float) -> None:
    """POST ``body`` to /v1/embeddings and close the connection after ``leave_after_s`` without reading."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(http_request("POST", "/v1/embeddings", body))
        time.sleep(leave_after_s)


@case("a client that disconnects while its 2048 inputs run", group="own")
def client_disconnects(ctx: Context) -> Result:
    server = ctx.start("disconnect", *ctx.slow_rows())
    result = Result(1)
    try:
        body = json.dumps({"input": ["a"] * 2048, "model": ctx.model}).encode()
        rows = lambda: metric(server.url, "cpt_batch_rows_sum")  # noqa: E731
        started = time.perf_counter()
        send_and_leave(server.port, body, 1.0)
        while metric(server.url, "cpt_queued_rows") > 0 and time.perf_counter() - started < 600:
            time.sleep(0.5)
        left_at, unchanged = rows(), 0
        while unchanged < 2:  # the micro-batch in the model when the client left may still finish
            time.sleep(2.0)
            now = rows()
            unchanged, left_at = (unchanged + 1 if now == left_at else 0), now
        took = time.perf_counter() - started
        statuses = {s: metric(server.url, "cpt_requests_total", route="/v1/embeddings", status=s) for s in
                    ("200", "499")}  # fmt: skip
    finally:
        server.stop()
    computed = int(left_at)
    if computed > 256 or statuses["200"]:  # more than the micro-batch in the model when it left (256 rows at most)
        result.failures.append(f"{computed} of 2048 rows computed for a client that left; 200s counted: "
                               f"{statuses['200']:.0f}")  # fmt: skip
    result.figures = (f"left after 1 s: {computed} of 2048 rows computed in all ({took:.1f} s); counted as "
                      f"200: {statuses['200']:.0f}, as 499: {statuses['499']:.0f}")  # fmt: skip
    return result


@case("SIGTERM while a 2048-input request runs (grace 5 s)", group="own")
def sigterm_during_a_large_request(ctx: Context) -> Result:
    import httpx

    server = ctx.start("sigterm-large", *ctx.slow_rows())
    answer: dict = {}

    def client() -> None:
        try:
            response = httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a"] * 2048, "model": ctx.model},
                                  headers={"Authorization": f"Bearer {KEY}"}, timeout=300)  # fmt: skip
            answer.update(status=response.status_code, type=response.headers.get("content-type"), body=response.text)
        except httpx.TransportError as error:
            answer.update(status=None, body=repr(error))

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1.5)  # tokenized, rows running
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(120)
    except subprocess.TimeoutExpired:
        server.proc.kill()
    took = time.monotonic() - started
    thread.join(60)
    result = Result(1)
    is_json = (answer.get("type") or "").startswith("application/json")
    # within the grace (5 s) and the interpreter's exit
    if answer.get("status") not in (200, 503) or (answer.get("status") == 503 and not is_json) or took > 5 + 1:
        result.failures.append(f"answered {answer.get('status')} ({answer.get('type')}), exit in {took:.1f} s")
    said = f"{answer.get('status')} {answer.get('type')} {answer.get('body', '')[:70]!r}"
    result.figures = f"the client got {said}; exit {took:.1f} s after SIGTERM (code {server.proc.returncode})"
    return result


@case("SIGTERM under load (16 clients)", group="own")
def sigterm_under_load(ctx: Context) -> Result:
    import httpx

    server = ctx.start("sigterm-load")
    counts = {"ok": 0, "refused_503": 0, "connection_errors": 0, "other": 0}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def main() -> float:
        stop = asyncio.Event()

        async def client(http: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    response = await http.post(f"{server.url}/v1/embeddings", headers=headers,
                                               json={"input": "hello " * 40, "model": ctx.model})  # fmt: skip
                    counts[{200: "ok", 503: "refused_503"}.get(response.status_code, "other")] += 1
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
    result = Result(sum(counts.values()))
    if counts["other"] or took > 5 + 1:
        result.failures.append(f"{counts['other']} answers neither 200 nor 503; exit in {took:.1f} s")
    result.figures = (f"{counts['ok']} answered 200, {counts['refused_503']} refused 503 while stopping, "
                      f"{counts['connection_errors']} connections refused after SIGTERM; exit {took:.2f} s "
                      f"(code {server.proc.returncode})")  # fmt: skip
    return result


def slow_upload(port: int, path: str, size: int, seconds: float) -> int | None:
    """Send headers declaring ``size`` bytes, then the body over ``seconds``; the status answered (None: none)."""
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as sock:
        sock.sendall(http_request("POST", path, key=None, length=size))
        pause = seconds / (size / len(chunk))
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
                time.sleep(pause)
        except OSError:  # the server answered and closed: the rest is never read
            pass
        try:
            return read_answer(sock.makefile("rb"))[0]
        except (OSError, ValueError, IndexError):
            return None


@case("40 slow 9.5 MB uploads to a path outside /v1, without the key")
def key_before_any_body(ctx: Context) -> Result:
    server, result = ctx.server, Result(40)
    before = rss_mib(server.proc.pid)
    statuses: list[int | None] = []
    started = time.perf_counter()
    with PeakRss(server.proc.pid) as peak:
        threads = [threading.Thread(target=lambda: statuses.append(slow_upload(server.port, "/upload", 9_500_000, 10)))
                   for _ in range(40)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    took = time.perf_counter() - started
    after = rss_mib(server.proc.pid)
    wrong = [status for status in statuses if status != 401]
    if wrong or peak.peak - before > 100:
        result.failures.append(f"statuses {sorted(set(map(str, statuses)))}, RSS peak +{peak.peak - before:.0f} MiB")
    result.figures = (f"statuses {sorted(set(map(str, statuses)))} in {took:.1f} s; RSS {before:.0f} -> peak "
                      f"{peak.peak:.0f} -> {after:.0f} MiB")  # fmt: skip
    return result


@case("/docs, /redoc, /openapi.json, /metrics without the key; scripts from a CDN")
def documents_without_the_key(ctx: Context) -> Result:
    import httpx

    result, answers = Result(4), {}
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        response = httpx.get(f"{ctx.server.url}{path}", timeout=60)
        answers[path] = response.status_code
        if response.status_code == 200 or "cdn" in response.text:
            result.failures.append(
                f"{path}: {response.status_code}{' with CDN scripts' if 'cdn' in response.text else ''}"
            )
    result.figures = ", ".join(f"{path} {status}" for path, status in answers.items())
    return result


@case("a request line and half the headers, then nothing")
def slow_headers(ctx: Context) -> Result:
    result, limit = Result(1), 30.0
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", ctx.server.port), timeout=limit) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: applic")
        try:
            reader = sock.makefile("rb")
            status: int | str = read_answer(reader)[0]
            closed = reader.read(1) == b""
        except TimeoutError:
            status, closed = f"nothing in {limit:.0f} s", False
    took = time.perf_counter() - started
    if status != 408 or not closed:
        result.failures.append(f"answered {status}; connection closed: {closed}")
    result.figures = f"{status} after {took:.1f} s; connection closed: {closed}"
    return result


@case("load: 32 clients x 20 requests")
def load(ctx: Context) -> Result:
    import httpx
    import numpy as np

    server, texts = ctx.server, [f"query number {i} about sorting lists" for i in range(20)]
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=600, headers=headers) as http:
        single = {t: http.post(f"{server.url}/v1/embeddings", json={"input": t, "model": ctx.model}).json()[
            "data"][0]["embedding"] for t in texts}  # fmt: skip
    before, answers, latencies = rss_mib(server.proc.pid), [], []

    async def client(http: httpx.AsyncClient) -> None:
        for text in texts:
            started = time.perf_counter()
            response = await http.post(f"{server.url}/v1/embeddings", json={"input": text, "model": ctx.model})
            latencies.append(time.perf_counter() - started)
            answers.append((text, response.json()["data"][0]["embedding"]))

    async def main() -> None:
        async with httpx.AsyncClient(timeout=600, headers=headers, limits=httpx.Limits(max_connections=64)) as http:
            await asyncio.gather(*(client(http) for _ in range(32)))

    asyncio.run(main())
    worst = max(float(np.abs(np.array(v) - np.array(single[t])).max()) for t, v in answers)
    result = Result(len(answers), [f"max diff {worst:.1e}"] if worst > 1e-5 else [])
    result.figures = (f"p50 / p99 {percentiles(latencies)} ms; RSS {before:.0f} -> {rss_mib(server.proc.pid):.0f} MiB;"
                      f" max diff to the single answer {worst:.1e}")  # fmt: skip
    return result


@case("kill -9 during training (a checkpoint every step, keep 2)", group="training")
def kill_training(ctx: Context) -> Result:
    """Kill -9 tiny training runs at random moments; check what is left and that resume finishes."""
    from models.manifest import is_complete

    data = ctx.work / "pairs.jsonl"
    words = "sort a list of numbers by key value and return the result quickly".split()
    rng = random.Random(ctx.args.seed)
    rows = [{"x": " ".join(rng.sample(words, 5)), "y": " ".join(rng.sample(words, 6))} for _ in range(64)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = [sys.executable, "train/contrastive.py", "model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl",
            f"data.path={data}", "trainer.steps=40", "trainer.batch_size=8", "trainer.checkpoint_every=1",
            "trainer.keep_checkpoints=2"]  # fmt: skip
    incomplete = finished = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for trial in range(ctx.args.kills):
        run_dir = ctx.work / f"run-{trial}"
        command = [*base, f"hydra.run.dir={run_dir}"]
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (run_dir / "checkpoints").is_dir() and proc.poll() is None:  # wait for the first checkpoint
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        incomplete += sum(not is_complete(p) for p in (run_dir / "checkpoints").glob("step-*"))
        resumed = subprocess.run([*command, "resume=auto"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        finished += resumed.returncode == 0 and is_complete(run_dir / "checkpoints" / "step-000040")
    result = Result(
        ctx.args.kills, figures=f"incomplete checkpoints left: {incomplete}; resumed to the end: {finished}"
    )
    if incomplete or finished < ctx.args.kills:
        result.failures.append(f"{incomplete} incomplete checkpoints, {ctx.args.kills - finished} resumes failed")
    return result


@case("bad data through the training CLI (fault_injection_data.py; its table below)", group="data")
def bad_data(ctx: Context) -> Result:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from fault_injection_data import run_data_cases

    runs = run_data_cases(ctx.work / "data")
    ctx.data_runs = runs  # type: ignore[attr-defined]
    failures = [f"{r['case']} ({r['mode']})" for r in runs if not r["ok"]]
    return Result(len(runs), failures, f"{len(runs) - len(failures)} of {len(runs)} runs stopped with the right error")


# ---- running them -------------------------------------------------------------------------------


def build_tower(folder: Path) -> Path:
    """The tiny random decoder of the tests with SmolLM2's tokenizer (its real text limits), or the byte-level
    test tokenizer when SmolLM2 has not been converted yet."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from models import DecoderEmbedder, parse_sides
    from models.backbone import cache_root
    from models.embedder import add_delimiters
    from tests.conftest import TINY_LLAMA, TWO_SIDES

    converted = cache_root() / "models" / "smollm2-135m"
    if not (converted / "tokenizer_config.json").is_file():
        DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).save_pretrained(folder)
        return folder
    tokenizer = AutoTokenizer.from_pretrained(converted)
    fields = {key: value for key, value in TINY_LLAMA.items() if key != "model_type"}
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model("llama", vocab_size=len(tokenizer), **fields))
    sides = parse_sides(TWO_SIDES)
    add_delimiters(backbone, tokenizer, list(sides.values()))
    DecoderEmbedder(backbone, tokenizer, sides).save_pretrained(folder)
    return folder


def served_model(tower: Path) -> tuple[str, int]:
    """The model name requests use for ``tower`` (its first side) and its tokenizer's most characters per token."""
    from transformers import AutoTokenizer

    from serve.engine import max_chars_per_token

    side = next(iter(json.loads((tower / "embedder_config.json").read_text())["sides"]))
    return f"tower-{side}", max_chars_per_token(AutoTokenizer.from_pretrained(tower / "tokenizer"))


def run_cases(ctx: Context, cases: list[Case]) -> list[tuple[Case, Result]]:
    """Each case in order; the shared server starts before the first server case. A case that raises is a failure."""
    results = []
    try:
        for item in cases:
            if item.group == "server" and ctx.server is None:
                ctx.server = ctx.start("server")
            try:
                result = item.run(ctx)
            except Exception as error:  # reported in the table; the other cases still run
                result = Result(1, [f"{type(error).__name__}: {str(error)[:150]}"])
            if ctx.server is not None and ctx.server.proc.poll() is not None:
                result.crashed, ctx.server = True, None
            results.append((item, result))
            print(f"  {item.name}: {len(result.failures)} failures", file=sys.stderr, flush=True)
    finally:
        if ctx.server is not None:
            ctx.server.stop()
    return results


def print_table(results: list[tuple[Case, Result]]) -> None:
    print("| case | tries | failures | crashes | figures |")
    print("|---|---:|---:|---:|---|")
    for item, result in results:
        print(f"| {item.name} | {result.tries} | {len(result.failures)} | {int(result.crashed)} | {result.figures} |")
    failures = [f"{item.name}: {failure}" for item, result in results for failure in result.failures]
    print(f"\n{len(failures)} failures" + (":" if failures else ""), *failures, sep="\n  ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tower", type=Path, default=None, help="serve this checkpoint (default: a tiny tower)")
    parser.add_argument("--only", action="append", default=[], help="run the cases whose name contains this")
    parser.add_argument("--skip-training", action="store_true", help="leave out kill -9 during training")
    parser.add_argument("--skip-data", action="store_true", help="leave out the bad-data cases")
    args = parser.parse_args()
    skipped = {"training"} if args.skip_training else set()
    skipped |= {"data"} if args.skip_data else set()
    cases = [c for c in CASES if c.group not in skipped and (not args.only or any(o in c.name for o in args.only))]
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs\n")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        tower = args.tower or build_tower(work / "tower")
        model, args.max_chars_per_token = served_model(tower)
        print(f"# tower: {args.tower or 'tiny random decoder + SmolLM2 tokenizer'}; requests to {model}\n")
        context = Context(work, tower, model, args)
        results = run_cases(context, cases)
        print_table(results)
        data_runs = getattr(context, "data_runs", None)
    if data_runs:
        from fault_injection_data import print_table as print_data_table

        print("\n## Bad data through the training CLI\n")
        print_data_table(data_runs)
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sys.exit(1 if any(result.failures or result.crashed for _, result in results) else 0)


if __name__ == "__main__":
    main()

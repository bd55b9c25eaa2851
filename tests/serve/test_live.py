"""Against a real uvicorn on 127.0.0.1: the official openai client, 32 concurrent clients, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time

import numpy as np
import pytest

from serve.app import Settings, create_app
from serve.engine import EmbeddingEngine
from tests.serve.conftest import MAX_LENGTH, NAME, LoopbackServer, build_engine, raw_post, read_response

TEXTS = ["binary search in a sorted array", "how to reverse a linked list", "x", "lorem ipsum " * 20]


def openai_client(server: LoopbackServer, api_key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0, timeout=30)


def test_openai_client_base64_default_and_float(live_server, engine):
    client = openai_client(live_server)
    want = engine.model.encode(TEXTS, "doc", max_length=MAX_LENGTH).numpy()
    default = client.embeddings.create(model=f"{NAME}-doc", input=TEXTS)  # asks for base64, decodes it
    floats = client.embeddings.create(model=f"{NAME}-doc", input=TEXTS, encoding_format="float")
    got_default = np.array([item.embedding for item in default.data], dtype=np.float32)
    got_float = np.array([item.embedding for item in floats.data], dtype=np.float32)
    np.testing.assert_allclose(got_default, want, atol=1e-5)
    np.testing.assert_array_equal(got_default, got_float)
    assert default.usage.prompt_tokens == sum(min(len(ids) + 2, MAX_LENGTH) for ids in engine.tokenize(TEXTS))
    assert default.model == f"{NAME}-doc"
    short = client.embeddings.create(model=f"{NAME}-query", input=[[1, 2, 3]], dimensions=4)
    assert len(short.data[0].embedding) == 4
    assert [m.id for m in client.models.list()] == [f"{NAME}-doc", f"{NAME}-query"]


def test_openai_client_errors(live_server, engine):
    import openai

    client = openai_client(live_server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="nope", input="hi")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=f"{NAME}-doc", input="")
    assert empty.value.code == "empty_input" and empty.value.type == "invalid_request_error"

    locked = LoopbackServer(create_app(Settings(api_key="k3y"), engine=engine)).start()
    try:
        with pytest.raises(openai.AuthenticationError) as denied:
            openai_client(locked, api_key="wrong").embeddings.create(model=f"{NAME}-doc", input="hi")
        assert denied.value.code == "invalid_api_key"
        ok = openai_client(locked, api_key="k3y").embeddings.create(model=f"{NAME}-doc", input="hi")
        assert len(ok.data) == 1
    finally:
        locked.stop()


def test_lone_surrogate_is_a_400_and_the_connection_lives_on(live_server):
    good = json.dumps({"input": "fine", "model": f"{NAME}-doc"}).encode()
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=30) as sock:
        sock.sendall(raw_post("/v1/embeddings", b'{"input": "a\\ud800b", "model": "tiny-doc"}'))
        status, _, body = read_response(sock)
        assert status == 400, body
        assert json.loads(body)["error"]["param"] == "input"
        sock.sendall(raw_post("/v1/embeddings", good))  # the same keep-alive connection
        status, _, body = read_response(sock)
        assert status == 200, body


def test_a_declared_50_mb_body_is_refused_before_it_is_sent(live_server):
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=30) as sock:
        sock.sendall(raw_post("/v1/embeddings", b'{"input": ["' + b"x" * 1024, content_length=50_000_000))
        status, headers, body = read_response(sock)
        assert status == 413, body
        assert json.loads(body)["error"]["code"] == "request_too_large"
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # closed: the rest of the 50 MB is never read


def test_a_body_that_stops_arriving_is_408_on_a_real_server(engine):
    server = LoopbackServer(create_app(Settings(body_timeout_s=0.5), engine=engine)).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            started = time.monotonic()
            sock.sendall(raw_post("/v1/embeddings", b'{"input": "hel', content_length=100))
            status, headers, body = read_response(sock)
            waited = time.monotonic() - started
        assert status == 408, body
        assert 0.4 < waited < 10
        assert headers["connection"] == "close"
    finally:
        server.stop()


def test_sigterm_ends_the_server_within_the_graceful_bound_while_a_body_is_half_sent(tmp_path):
    """The request still waiting for its body near the end of the grace is answered 503 JSON, not cancelled."""
    from models import DecoderEmbedder
    from serve.process import ServerProcess, free_port
    from tests.conftest import TINY_LLAMA, TWO_SIDES

    DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).save_pretrained(tmp_path / "ckpt")
    port, graceful_s = free_port(), 2
    args = ["-m", "serve", "--model", str(tmp_path / "ckpt"), "--name", NAME, "--port", str(port)]
    args += ["--graceful-shutdown-s", str(graceful_s), "--body-timeout-s", "600", "--log-level", "warning"]
    with open(tmp_path / "server.log", "w") as log:
        server = ServerProcess(args, port, log=log)
        try:
            server.wait_ready(120)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(raw_post("/v1/embeddings", b'{"input": "hel', content_length=100))
                time.sleep(0.5)  # the request is in flight, waiting for the rest of its body
                started = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                status, headers, body = read_response(sock)
                server.proc.wait(graceful_s + 20)
                took = time.monotonic() - started
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(10)
    log_text = (tmp_path / "server.log").read_text()
    assert status == 503 and json.loads(body)["error"]["code"] == "unavailable", body
    assert headers["connection"] == "close"
    # the graceful bound plus the lifespan's shutdown and the interpreter's exit, on a busy 2-core machine
    assert took < graceful_s + 8, (took, log_text)
    assert server.proc.returncode in (0, -signal.SIGTERM), log_text  # uvicorn re-raises the SIGTERM it handled
    assert "timeout graceful shutdown exceeded" not in log_text  # nothing left for uvicorn to cancel


def test_32_clients_x_20_requests_equal_single_results(engine):
    import httpx

    app = create_app(Settings(max_wait_ms=10, max_batch_tokens=4096), engine=engine)
    server = LoopbackServer(app).start()
    clients, per_client = 32, 20
    inputs = [(f"{NAME}-{'query' if k % 2 else 'doc'}", f"request {k}: " + "token " * (k % 13)) for k in range(40)]
    try:
        single = {}
        with httpx.Client(base_url=server.url, timeout=60) as sync:
            for model, text in inputs:
                response = sync.post("/v1/embeddings", json={"model": model, "input": text})
                single[model, text] = np.array(response.json()["data"][0]["embedding"], dtype=np.float32)
        batches_before = app.state.batcher.stats.batches

        async def one_client(c: int, http: httpx.AsyncClient) -> list[tuple[tuple[str, str], np.ndarray]]:
            out = []
            for r in range(per_client):
                model, text = inputs[(c * per_client + r) % len(inputs)]
                response = await http.post("/v1/embeddings", json={"model": model, "input": text})
                assert response.status_code == 200, response.text
                out.append(((model, text), np.array(response.json()["data"][0]["embedding"], dtype=np.float32)))
            return out

        async def main():
            limits = httpx.Limits(max_connections=clients)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
                return await asyncio.gather(*(one_client(c, http) for c in range(clients)))

        results = asyncio.run(main())
        stats = app.state.batcher.stats
    finally:
        server.stop()
    answers = [item for client in results for item in client]
    assert len(answers) == clients * per_client
    for key, vector in answers:
        np.testing.assert_allclose(vector, single[key], atol=1e-5)
    batches = stats.batches - batches_before
    assert batches < clients * per_client  # requests were micro-batched together
    assert stats.largest_batch > 1


class SlowEngine(EmbeddingEngine):
    """The tiny engine with a model that takes ``delay`` seconds per batch, to catch requests in flight."""

    delay = 0.5

    def run(self, rows):
        time.sleep(self.delay)
        return super().run(rows)


def test_shutdown_finishes_requests_in_flight():
    import httpx

    base = build_engine()
    slow = SlowEngine(base.model, NAME, max_length=MAX_LENGTH)
    app = create_app(Settings(max_wait_ms=0, max_batch_size=1), engine=slow)
    server = LoopbackServer(app).start()
    statuses: list[int] = []

    def call(text: str) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            statuses.append(http.post("/v1/embeddings", json={"model": f"{NAME}-doc", "input": text}).status_code)

    threads = [threading.Thread(target=call, args=(f"text {i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while app.state.batcher.stats.batches == 0 and app.state.batcher.queued < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/health").status_code == 200  # the event loop answers while the model thread sleeps
    assert time.perf_counter() - started < SlowEngine.delay
    server.stop()  # graceful: uvicorn waits for the in-flight requests, then the lifespan drains the queue
    for thread in threads:
        thread.join(30)
    assert statuses == [200, 200, 200]
    assert app.state.status == "stopping"

"""What a hostile or careless client could do to the server (issue 41's probe), each case a regression test.

Oversized text bought tokenizer work before the 400; a client that disconnected still got its rows
computed (and a 200 in the access log); SIGTERM answered a plain-text 500 and overran the grace; a
key did not guard bodies outside ``/v1``, the OpenAPI document or ``/metrics``; ``/docs`` loaded a
CDN's scripts; a trailing slash redirected to the client's ``Host``; a 1 MB model name came back
in the error; headers that never finished held the connection; ``59.0`` was a token id to the
schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import pytest

from serve.app import Settings, create_app
from serve.engine import TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS, EmbeddingEngine, character_chunks
from serve.schemas import MAX_TOKENS_PER_ITEM
from tests.serve.conftest import (
    MAX_LENGTH,
    NAME,
    LoopbackServer,
    build_engine,
    raw_post,
    read_response,
    run_with_client,
)
from tests.serve.test_guard import Body, call, json_headers

KEY = "s3cret"
AUTH = {"authorization": f"Bearer {KEY}"}


# ---- work before the limits ---------------------------------------------------------------------


def test_character_chunks_bound_texts_and_characters():
    texts = ["a" * 10] * 100 + ["b" * 70_000] + ["c"] * 3
    chunks = character_chunks(texts, TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS)
    assert [text for chunk in chunks for text in chunk] == texts
    for chunk in chunks:
        assert len(chunk) <= TOKENIZE_CHUNK
        assert len(chunk) == 1 or sum(map(len, chunk)) <= TOKENIZE_CHUNK_CHARS


def test_tokenizing_stops_at_the_first_chunk_with_an_input_over_its_limit(engine):
    # 2 bytes (2 tokens of the byte-level tokenizer) per character: under the character bound, over the token limit
    texts = ["é" * (MAX_TOKENS_PER_ITEM - 100)] * 14
    assert len(texts[0]) <= MAX_TOKENS_PER_ITEM * engine.max_chars_per_token
    first_chunk = len(character_chunks(texts, TOKENIZE_CHUNK, TOKENIZE_CHUNK_CHARS)[0])
    assert len(engine.tokenize(texts, stop_after_item_tokens=MAX_TOKENS_PER_ITEM)) == first_chunk < len(texts)
    response = run_with_client(
        create_app(Settings(), engine=engine),
        lambda client: client.post("/v1/embeddings", json={"input": texts, "model": f"{NAME}-doc"}),
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"
    assert response.json()["error"]["message"].startswith("input[0] has")


# ---- a client that disconnects ------------------------------------------------------------------


class GatedEngine(EmbeddingEngine):
    """The tiny engine whose forward calls wait for ``gate`` (at most ``timeout`` s): work caught in flight."""

    def __init__(self, *args, timeout: float = 60, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.timeout = timeout
        self.rows_run = 0

    def run(self, rows):
        self.gate.wait(self.timeout)
        self.rows_run += len(rows)
        return super().run(rows)


def gated_engine(timeout: float = 60) -> GatedEngine:
    base = build_engine()
    return GatedEngine(base.model, NAME, max_length=MAX_LENGTH, timeout=timeout)


class LeavingClient(Body):
    """Sends ``body``, then disconnects once ``leave`` is set."""

    def __init__(self, body: bytes, leave: asyncio.Event) -> None:
        super().__init__(body)
        self.leave = leave

    async def __call__(self) -> dict:
        if self.chunks:
            return await super().__call__()
        await self.leave.wait()
        return {"type": "http.disconnect"}


def test_a_client_that_disconnects_has_its_rows_dropped_and_is_logged_499(caplog):
    served = gated_engine()
    app = create_app(Settings(max_batch_size=1, max_wait_ms=0, return_wait_ms=0), engine=served)
    payload = json.dumps({"input": [f"text {i}" for i in range(20)], "model": f"{NAME}-doc"}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in json_headers(len(payload)).items()],
             "client": ("127.0.0.1", 50001), "server": ("127.0.0.1", 8000)}  # fmt: skip
    statuses: list[int] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def main() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            leave = asyncio.Event()
            request = asyncio.create_task(app(scope, LeavingClient(payload, leave), send))
            while app.state.batcher.queued < 19:  # the first row is in the (gated) model, 19 wait
                await asyncio.sleep(0.01)
            leave.set()
            await asyncio.wait_for(request, 30)
            queued = app.state.batcher.queued
            served.gate.set()
            await asyncio.sleep(0.2)
            return queued, app.state.batcher.stats.rows

    with caplog.at_level(logging.INFO, logger="serve.access"):
        queued, rows = asyncio.run(main())
    assert queued == 0 and rows <= 1  # the 19 queued rows were dropped; at most the one in flight ran
    assert statuses == [499]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve.access"]
    assert [line["status"] for line in lines] == [499]


# ---- SIGTERM ------------------------------------------------------------------------------------


def test_shutdown_answers_work_still_running_with_503_json_and_stops_within_the_grace():
    served = gated_engine(timeout=120)  # a forward call that would outlast any grace
    app = create_app(Settings(graceful_shutdown_s=2, max_wait_ms=0), engine=served)
    server = LoopbackServer(app, production=True).start()
    answers: list[httpx.Response] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            answers.append(http.post("/v1/embeddings", json={"input": ["a", "b"], "model": f"{NAME}-doc"}))

    thread = threading.Thread(target=client)
    thread.start()
    while app.state.batcher.stats.batches == 0 and not app.state.batcher._running:
        time.sleep(0.01)
    started = time.monotonic()
    try:
        server.stop(timeout=60)  # uvicorn's shutdown, as at SIGTERM
        stopped = time.monotonic() - started
    finally:
        served.gate.set()
        thread.join(30)
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["error"]["code"] == "unavailable"
    assert stopped < 30  # the grace (2 s) and the exit, not the 120 s forward call


# ---- the key, the documents and the paths -------------------------------------------------------


@pytest.fixture(scope="module")
def locked(engine):
    return create_app(Settings(api_key=KEY), engine=engine)


@pytest.mark.parametrize("path", ["/v2/nothing", "/health/", "/docs", "/"])
def test_with_a_key_no_body_is_read_on_any_path_without_it(locked, path):
    body = Body(b"x" * 1024, complete=False)
    status, headers, error = call(locked, body, json_headers(9_500_000), path=path)
    assert (status, error["error"]["code"], body.calls) == (401, "invalid_api_key", 0)
    assert headers["connection"] == "close"


@pytest.mark.parametrize("api_key", [None, KEY])
def test_a_body_outside_v1_is_refused_unread(engine, api_key):
    app = create_app(Settings(api_key=api_key), engine=engine)
    body = Body(b"x" * 1024, complete=False)
    status, headers, error = call(app, body, {**json_headers(9_500_000), **AUTH}, path="/health")
    assert (status, error["error"]["code"], body.calls) == (413, "body_not_allowed", 0)
    assert headers["connection"] == "close"


def test_documents_and_metrics_are_behind_the_key_and_there_is_no_cdn(locked):
    async def body(client):
        out = {path: (await client.get(path)).status_code for path in ("/openapi.json", "/metrics", "/health")}
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            response = await client.get(path, headers=AUTH)
            out[path] = response.status_code
            assert "cdn" not in response.text
        out["/openapi.json with the key"] = (await client.get("/openapi.json", headers=AUTH)).status_code
        out["/metrics with the key"] = (await client.get("/metrics", headers=AUTH)).status_code
        return out

    assert run_with_client(locked, body) == {
        "/openapi.json": 401, "/metrics": 401, "/health": 200, "/docs": 404, "/redoc": 404,
        "/docs/oauth2-redirect": 404, "/openapi.json with the key": 200, "/metrics with the key": 200,
    }  # fmt: skip


def test_a_trailing_slash_is_not_redirected_to_the_clients_host(engine):
    app = create_app(Settings(), engine=engine)
    response = run_with_client(app, lambda client: client.post(
        "/v1/embeddings/", json={"input": "hi", "model": f"{NAME}-doc"}, headers={"host": "evil.example"}))  # fmt: skip
    assert response.status_code == 404 and "location" not in response.headers


# ---- what comes back ----------------------------------------------------------------------------


def test_error_messages_cut_echoed_input(engine):
    from serve.errors import ECHO_CHARS

    app = create_app(Settings(), engine=engine)

    async def body(client):
        model = await client.post("/v1/embeddings", json={"input": "hi", "model": "m" * 1_000_000})
        dims = await client.post("/v1/embeddings", json={"input": "hi", "model": f"{NAME}-doc", "dimensions": 10**4000})
        return model, dims

    model, dims = run_with_client(app, body)
    assert model.status_code == 404 and "(1000000 characters)" in model.json()["error"]["message"]
    assert len(model.content) < 400 + ECHO_CHARS
    assert dims.status_code == 400 and len(dims.content) < 400


@pytest.mark.parametrize(
    ("field", "value"),
    [("input", [59.0]), ("input", [[59.0]]), ("input", [59, 59.0]), ("input", [[59], [59.0]]), ("input", [True]),
     ("dimensions", 4.0)],
)  # fmt: skip
def test_token_ids_and_dimensions_are_json_integers_only(engine, field, value):
    app = create_app(Settings(), engine=engine)
    payload = {"input": [59], "model": f"{NAME}-doc", field: value}
    response = run_with_client(app, lambda client: client.post("/v1/embeddings", json=payload))
    assert response.status_code == 400 and response.json()["error"]["param"] == field


# ---- slow headers -------------------------------------------------------------------------------


def test_headers_that_do_not_finish_arriving_are_answered_408_and_closed(engine):
    app = create_app(Settings(header_timeout_s=0.5), engine=engine)
    server = LoopbackServer(app, production=True).start()
    good = json.dumps({"input": "hi", "model": f"{NAME}-doc"}).encode()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # and nothing more
            status, headers, body = read_response(sock)
            assert (status, json.loads(body)["error"]["code"], headers["connection"]) == (408, "request_timeout",
                                                                                          "close")  # fmt: skip
            assert sock.recv(1) == b""
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(raw_post("/v1/embeddings", good))  # a prompt request on a keep-alive connection ...
            assert read_response(sock)[0] == 200
            time.sleep(1.0)  # ... idle longer than the header timeout is fine (uvicorn's keep-alive: 5 s)
            sock.sendall(raw_post("/v1/embeddings", good)[:20])  # ... then a request whose headers stall
            assert read_response(sock)[0] == 408
    finally:
        server.stop()


def test_the_heap_is_trimmed_after_tokenizing_a_large_request(engine, monkeypatch):
    import serve.inputs

    trims: list[int] = []
    monkeypatch.setattr(serve.inputs, "release_heap", lambda: trims.append(1))
    monkeypatch.setattr(serve.inputs, "TRIM_AFTER_CHARS", 30)
    serve.inputs.tokenize_within_limits(engine, ["short"] * 3)  # 15 characters
    assert trims == []
    serve.inputs.tokenize_within_limits(engine, ["twenty characters!!!"] * 2)  # 40 characters
    assert trims == [1]

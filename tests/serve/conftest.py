"""Fixtures for the server tests: tiny random towers, an in-process client, and a real uvicorn on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import TINY_LLAMA, TWO_SIDES

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")
NAME = "tiny"
ONE_SIDE = {"text": {"open_token": "<|t|>", "close_token": "<|/t|>"}}
MAX_LENGTH = 64


def build_engine(sides: dict = TWO_SIDES, **kwargs: Any):
    from models import DecoderEmbedder
    from serve.engine import EmbeddingEngine

    model = DecoderEmbedder.build(None, sides, random_config=TINY_LLAMA, seed=0)
    return EmbeddingEngine(model, NAME, max_length=kwargs.pop("max_length", MAX_LENGTH), **kwargs)


@pytest.fixture(scope="session")
def engine():
    """The query/doc tower, served as ``tiny-query`` and ``tiny-doc``."""
    return build_engine()


@pytest.fixture(scope="session")
def one_side_engine():
    """A single-side (similarity) tower, served as ``tiny`` and ``tiny-text``."""
    return build_engine(ONE_SIDE)


def run_with_client(app, body: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``body(client)`` against ``app`` in process, with the app's lifespan around it."""
    import httpx

    async def main() -> T:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await body(client)

    return asyncio.run(main())


class LoopbackServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a background thread.

    ``production=True``: as ``python -m serve`` runs it (:func:`serve.lifecycle.run_server`): the
    draining server and the header-timeout protocol, with the app's own grace and header timeout.
    """

    def __init__(self, app, production: bool = False) -> None:
        import uvicorn

        from serve.lifecycle import production_server

        self.app = app
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if production:
            self.server: uvicorn.Server = production_server(app, log_level="warning", lifespan="on")
        else:
            config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=30)
            self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from ``sock``: (status, lower-cased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection; got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection inside a body")
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def raw_post(path: str, body: bytes, content_length: int | None = None, headers: str = "") -> bytes:
    """An HTTP/1.1 keep-alive POST of ``body`` as raw bytes (``content_length`` may claim more than is sent)."""
    length = len(body) if content_length is None else content_length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{headers}\r\n"
    )
    return head.encode() + body


def loopback(app) -> Iterator[LoopbackServer]:
    server = LoopbackServer(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def live_server(engine) -> Iterator[LoopbackServer]:
    """A real server on loopback with the query/doc tower and no API key."""
    from serve.app import Settings, create_app

    yield from loopback(create_app(Settings(max_wait_ms=5), engine=engine))


def texts_for_retrieval(n: int = 24) -> tuple[list[str], list[str], dict[str, dict[str, int]]]:
    """Deterministic queries, documents (query i is relevant to document i) and qrels."""
    import random

    rng = random.Random(0)
    words = "sort list array string parse json file read write socket thread lock queue tree graph".split()
    docs = [" ".join(rng.choices(words, k=rng.randint(5, 30))) for _ in range(n)]
    queries = [" ".join(doc.split()[:3]) for doc in docs]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(n)}
    return queries, docs, qrels

"""Operations: Prometheus metrics (``GET /metrics``) and a structured access log, one JSON line per request.

Metrics (each app has its own registry, so several apps in one process do not collide):

- ``cpt_requests_total{route, status}`` and ``cpt_request_seconds{route}`` (histogram): every
  HTTP request, including those the guard refuses before the app sees them (401, 408, 413);
- ``cpt_embedding_inputs_total{model}``, ``cpt_embedding_tokens_total{model}``: what the
  embeddings route answered (inputs and ``prompt_tokens``);
- ``cpt_batch_rows``, ``cpt_batch_padded_tokens`` and ``cpt_batch_seconds`` (histograms): each
  micro-batch the model ran;
- ``cpt_queued_rows`` (gauge): rows waiting for the model right now.

The access log goes to the ``serve.access`` logger at INFO: ``{"method", "path", "status",
"ms", "client", "model", "inputs", "tokens"}`` (the last three on embeddings requests), so it can
be shipped as is to any log pipeline; ``--access-log off`` silences it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Send

access_logger = logging.getLogger("serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (64, 256, 1024, 4096, 16384, 65536)
ACCESS_KEY = "cpt_access"  # the scope entry where a route leaves what the access log should add


class ServerMetrics:
    """The server's Prometheus collectors, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cpt_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.request_seconds = Histogram("cpt_request_seconds", "time to answer a request", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.inputs = Counter("cpt_embedding_inputs", "inputs embedded", ["model"], registry=self.registry)
        self.tokens = Counter("cpt_embedding_tokens", "prompt tokens embedded", ["model"], registry=self.registry)
        self.batch_rows = Histogram("cpt_batch_rows", "rows per micro-batch", buckets=ROW_BUCKETS,
                                    registry=self.registry)  # fmt: skip
        self.batch_tokens = Histogram("cpt_batch_padded_tokens", "rows x longest row per micro-batch",
                                      buckets=TOKEN_BUCKETS, registry=self.registry)  # fmt: skip
        self.batch_seconds = Histogram("cpt_batch_seconds", "model time per micro-batch", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)  # fmt: skip
        self.queued_rows = Gauge("cpt_queued_rows", "rows waiting for the model", registry=self.registry)

    def timed_batches(self, run: Callable[[list], list], length_of: Callable[[Any], int]) -> Callable[[list], list]:
        """``run`` (the batcher's model call) observed per batch."""

        def observed(rows: list) -> list:
            started = time.perf_counter()
            try:
                return run(rows)
            finally:
                self.batch_seconds.observe(time.perf_counter() - started)
                self.batch_rows.observe(len(rows))
                self.batch_tokens.observe(len(rows) * max((length_of(row) for row in rows), default=0))

        return observed

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_label(path: str) -> str:
    """A bounded label: known routes as themselves, anything else as ``other`` (no label per stray URL)."""
    return path if path in KNOWN_ROUTES else "other"


KNOWN_ROUTES = frozenset({"/v1/embeddings", "/v1/models", "/health", "/metrics", "/openapi.json"})


class AccessLog:
    """ASGI middleware, outermost: counts and times every request and writes its access-log line."""

    def __init__(self, app: ASGIApp, *, metrics: ServerMetrics, enabled: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.enabled = enabled

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}  # what the client sees if the app fails before it answers

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            seconds = time.perf_counter() - started
            route = route_label(scope["path"])
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.request_seconds.labels(route).observe(seconds)
            extra = scope.get(ACCESS_KEY) or {}
            if status["code"] == 200 and "model" in extra:
                self.metrics.inputs.labels(extra["model"]).inc(extra["inputs"])
                self.metrics.tokens.labels(extra["model"]).inc(extra["tokens"])
            if self.enabled and access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client")
                line = {"method": scope["method"], "path": scope["path"], "status": status["code"],
                        "ms": round(1000 * seconds, 1), "client": f"{client[0]}:{client[1]}" if client else None,
                        **extra}  # fmt: skip
                access_logger.info(json.dumps(line))

"""The application factory: ``create_app(settings)``, its lifespan and its settings.

The routes are in :mod:`serve.routes`, the request and response models and the limits in
:mod:`serve.schemas`, the one error type in :mod:`serve.errors`. The lifespan loads the model
(unless an engine is handed in, as tests do) and starts the micro-batcher; at shutdown it answers
the rows still queued, or, when the server is draining (:mod:`serve.lifecycle`), stops at once:
the drain has answered every request by then. Two ASGI middlewares wrap the app: :class:`serve.metrics.AccessLog`
(outermost: it sees every answer) and :class:`serve.guard.RequestGuard` (the API key, then the
body's size and time, before FastAPI reads anything).

No interactive docs (``/docs`` and ``/redoc`` load their scripts from a CDN); the OpenAPI document
is at ``/openapi.json``, behind the key when there is one. No trailing-slash redirects (their
``Location`` would repeat the client's ``Host`` header).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serve import DEFAULT_PACK_TOKENS, DEFAULT_RETURN_WAIT_MS, DEFAULT_RETURN_WAIT_TOKENS
from serve.batching import MicroBatcher
from serve.engine import EmbeddingEngine, Row
from serve.errors import install_error_handlers
from serve.guard import RequestGuard
from serve.lifecycle import Drain
from serve.metrics import AccessLog, ServerMetrics
from serve.routes import build_router
from serve.schemas import MAX_BODY_BYTES, served_limits

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; the CLI builds one from its flags.

    Args:
        model: checkpoint, training run folder or export folder (unused when an engine is given).
        name: served model name ``NAME`` (default: the folder's name).
        api_key: when set, every request but ``GET /health`` needs ``Authorization: Bearer <api_key>``
            (``/metrics`` and the OpenAPI document included).
        max_batch_tokens: padded tokens (rows x longest row) of one micro-batch.
        max_wait_ms: how long a micro-batch waits for more rows after its first.
        return_wait_ms: how long, at most, a micro-batch waits for keep-alive clients just answered
            that are expected back (:class:`serve.batching.ReturningClients`); 0: never.
        return_wait_tokens: a micro-batch with this many real tokens stops waiting for them.
        max_batch_size: rows of one micro-batch.
        max_queued_rows: rows waiting beyond this answer 429 (overload).
        max_length: longest row the model runs, delimiters included.
        device: torch device of the model.
        precision: ``fp32`` or ``bf16`` (autocast), as the evaluation harness's ``source.precision``.
        access_log: one JSON line per request on the ``serve.access`` logger (see :mod:`serve.metrics`).
        backend: ``torch``, ``onnx`` (the export's ``onnx/`` graphs under onnxruntime) or
            ``onnx-int8`` (its dynamically quantized graphs).
        torch_threads: intra-op threads of the model (``None``: torch's default, one per core);
            on a machine shared with other work, fewer threads avoid stalls at thread barriers.
        max_body_bytes: larger request bodies answer 413 unread (default: 300,000 tokens at a
            generous 32 bytes each, see :data:`serve.schemas.MAX_BODY_BYTES`).
        body_timeout_s: a request body that takes longer to arrive answers 408.
        graceful_shutdown_s: at shutdown (SIGTERM), requests in flight get this long to finish; those
            still running a second before it ends (half of it, when shorter than 2 s) are answered 503
            and the process exits (:mod:`serve.lifecycle`; uvicorn's ``timeout_graceful_shutdown``).
        header_timeout_s: a connection whose request line and headers take longer to arrive is
            answered 408 and closed (``python -m serve``).
        pack_tokens: torch backend: each micro-batch runs as one padding-free forward call, its
            rows packed into sequences of at most this many tokens (:attr:`EmbeddingEngine.pack_tokens`);
            ``None`` or 0 (and the ONNX backends, whose graphs take padded rows): length chunks.
        call_overhead_tokens: with length chunks, padded tokens one forward call is worth when a
            micro-batch is cut (:func:`serve.engine.length_chunks`); ``None``: measured at start
            (:meth:`EmbeddingEngine.measure_call_overhead`); 0: padding alone decides.
    """

    model: str | None = None
    name: str | None = None
    api_key: str | None = None
    max_batch_tokens: int = 16384
    max_wait_ms: float = 5.0
    return_wait_ms: float = DEFAULT_RETURN_WAIT_MS
    return_wait_tokens: int = DEFAULT_RETURN_WAIT_TOKENS
    max_batch_size: int = 256
    max_queued_rows: int = 65536
    max_length: int = 512
    device: str = "cpu"
    precision: str = "fp32"
    backend: str = "torch"
    access_log: bool = True
    torch_threads: int | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    body_timeout_s: float = 30.0
    graceful_shutdown_s: float = 5.0
    header_timeout_s: float = 10.0
    call_overhead_tokens: float | None = 0.0
    pack_tokens: int | None = DEFAULT_PACK_TOKENS

    def __post_init__(self) -> None:
        if (
            self.max_body_bytes < 1
            or self.body_timeout_s <= 0
            or self.graceful_shutdown_s < 0
            or self.header_timeout_s <= 0
        ):
            raise ValueError(
                "need max_body_bytes >= 1, body_timeout_s > 0, graceful_shutdown_s >= 0 and header_timeout_s > 0, "
                f"got {self.max_body_bytes}, {self.body_timeout_s}, {self.graceful_shutdown_s}, "
                f"{self.header_timeout_s}"
            )


def create_app(settings: Settings, *, engine: EmbeddingEngine | None = None) -> FastAPI:
    """Build the application.

    Args:
        settings: server configuration.
        engine: an already built engine (tests, benchmarks); otherwise the lifespan loads
            ``settings.model``.
    """
    if engine is None and settings.model is None:
        raise ValueError("create_app needs settings.model (a checkpoint folder) or an engine")
    app = FastAPI(title="cpt-embeddings", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False)  # fmt: skip
    app.state.settings = settings
    app.state.given_engine = engine
    app.state.status = "starting"
    app.state.drain = Drain()
    app.state.metrics = ServerMetrics()
    install_error_handlers(app)
    app.include_router(build_router(settings.api_key))
    app.add_middleware(RequestGuard, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s, drain=app.state.drain)  # fmt: skip
    app.add_middleware(AccessLog, metrics=app.state.metrics, enabled=settings.access_log)  # outermost
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the engine and start the micro-batcher; at shutdown answer what is queued (at once when draining)."""
    settings: Settings = app.state.settings
    app.state.status = "starting"
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    served = app.state.given_engine
    if served is None:
        served = await asyncio.to_thread(
            EmbeddingEngine.from_folder, Path(settings.model), settings.name, settings.max_length, settings.device,
            settings.precision, settings.backend, settings.torch_threads,
        )  # fmt: skip
    await configure_batching(served, settings)
    batcher: MicroBatcher[Row, torch.Tensor] = MicroBatcher(
        app.state.metrics.timed_batches(served.run, row_length), row_length,
        max_batch_tokens=settings.max_batch_tokens, max_wait_ms=settings.max_wait_ms,
        max_batch_size=settings.max_batch_size, return_wait_ms=settings.return_wait_ms,
        return_wait_tokens=settings.return_wait_tokens,
    )  # fmt: skip
    batcher.start()
    app.state.metrics.queued_rows.set_function(lambda: batcher.queued)
    app.state.engine, app.state.batcher, app.state.status = served, batcher, "ok"
    try:
        yield
    finally:
        app.state.status = "stopping"
        # draining: every request in flight was answered by the drain's deadline, so a forward call still
        # running has nobody to answer and is not waited for (the grace is nearly spent)
        await batcher.close(timeout=0.0 if app.state.drain.started else None)


async def configure_batching(served: EmbeddingEngine, settings: Settings) -> None:
    """Packed micro-batches when the backend runs them, else length chunks with the call overhead set or measured."""
    if settings.pack_tokens and served.supports_packing:
        served.pack_tokens = settings.pack_tokens
    elif settings.call_overhead_tokens is None:
        overhead = await asyncio.to_thread(served.measure_call_overhead)
        logger.info("one forward call measured as worth %.1f padded tokens (length chunks)", overhead)
    else:
        served.call_overhead_tokens = settings.call_overhead_tokens


def row_length(row: Row) -> int:
    return len(row.ids)


def openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document; once the model is loaded it carries the model's bounds and is kept."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                           routes=app.routes)  # fmt: skip
    drop_validation_errors(document)
    json_errors_only(document)
    if app.state.status == "ok":
        served_limits(document, app.state.engine.embedding_dim, app.state.engine.vocab_size)
        app.openapi_schema = document
    return document


def json_errors_only(document: dict[str, Any]) -> None:
    """Error answers are JSON on every route; FastAPI files them under a route's own media type (``/metrics``: text)."""
    for item in document["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and response.get("content"):
                    response["content"] = {"application/json": next(iter(response["content"].values()))}


def drop_validation_errors(document: dict[str, Any]) -> None:
    """Remove FastAPI's 422 (this server answers validation failures with 400) and its models, in place."""
    for item in document["paths"].values():
        for operation in item.values():
            operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)

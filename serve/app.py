"""The FastAPI application: ``create_app(settings)``, its lifespan, and the routes.

Routes: ``POST /v1/embeddings`` (OpenAI's contract, see ``docs/serving.md``), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus, see :mod:`serve.metrics`). The lifespan loads the
model (unless an engine is handed in, as tests do), starts the micro-batcher and, at shutdown,
answers every queued row before returning; uvicorn waits for in-flight requests (up to
``graceful_shutdown_s``, then cancels them) before it runs the lifespan's shutdown.
:class:`serve.guard.RequestGuard` checks the API key and bounds the body before FastAPI reads it.

Usage counts the tokens each input has as the model runs it: the text's tokens (or the token
array), truncated to ``max_length - 2``, plus the side's two delimiters.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from serve import DEFAULT_PACK_TOKENS, DEFAULT_RETURN_WAIT_MS, DEFAULT_RETURN_WAIT_TOKENS
from serve.batching import BatcherClosed, MicroBatcher
from serve.engine import EmbeddingEngine, Row
from serve.errors import OVERLOADED, OpenAIError, install_error_handlers
from serve.guard import RequestGuard
from serve.metrics import ACCESS_KEY, AccessLog, ServerMetrics
from serve.schemas import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    MAX_TOKENS_PER_ITEM,
    MAX_TOKENS_PER_REQUEST,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    served_limits,
)

logger = logging.getLogger(__name__)
_BEARER = HTTPBearer(auto_error=False)
ERROR_STATUSES = {
    400: "invalid request: a field's type or value, an input over a limit, malformed JSON",
    401: "missing or wrong API key",
    404: "unknown model",
    408: "the request body did not arrive within the server's body timeout",
    413: "the request body is over the server's limit",
    429: "the server is overloaded; retry later",
    500: "unexpected server error",
    503: "the server is starting or shutting down",
}


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with; the CLI builds one from its flags.

    Args:
        model: checkpoint, training run folder or export folder (unused when an engine is given).
        name: served model name ``NAME`` (default: the folder's name).
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
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
        graceful_shutdown_s: at shutdown, requests still running after this long are cancelled
            (uvicorn's ``timeout_graceful_shutdown``; used by ``python -m serve``).
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
    call_overhead_tokens: float | None = 0.0
    pack_tokens: int | None = DEFAULT_PACK_TOKENS

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.body_timeout_s <= 0 or self.graceful_shutdown_s < 0:
            raise ValueError(
                "need max_body_bytes >= 1, body_timeout_s > 0 and graceful_shutdown_s >= 0, got "
                f"{self.max_body_bytes}, {self.body_timeout_s}, {self.graceful_shutdown_s}"
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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.status = "starting"
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        served = engine
        if served is None:
            assert settings.model is not None
            served = await asyncio.to_thread(
                EmbeddingEngine.from_folder,
                Path(settings.model),
                settings.name,
                settings.max_length,
                settings.device,
                settings.precision,
                settings.backend,
                settings.torch_threads,
            )
        if settings.pack_tokens and served.supports_packing:
            served.pack_tokens = settings.pack_tokens
        elif settings.call_overhead_tokens is None:
            overhead = await asyncio.to_thread(served.measure_call_overhead)
            logger.info("one forward call measured as worth %.1f padded tokens (length chunks)", overhead)
        else:
            served.call_overhead_tokens = settings.call_overhead_tokens
        batcher: MicroBatcher[Row, torch.Tensor] = MicroBatcher(
            metrics.timed_batches(served.run, row_length),
            row_length,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait_ms=settings.max_wait_ms,
            max_batch_size=settings.max_batch_size,
            return_wait_ms=settings.return_wait_ms,
            return_wait_tokens=settings.return_wait_tokens,
        )
        batcher.start()
        metrics.queued_rows.set_function(lambda: batcher.queued)
        app.state.engine = served
        app.state.batcher = batcher
        app.state.status = "ok"
        try:
            yield
        finally:
            app.state.status = "stopping"
            await batcher.close()

    app = FastAPI(title="cpt-embeddings", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.status = "starting"
    install_error_handlers(app)
    metrics = ServerMetrics()
    app.state.metrics = metrics
    app.add_middleware(
        RequestGuard,
        api_key=settings.api_key,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(AccessLog, metrics=metrics, enabled=settings.access_log)  # outermost: sees the guard's 4xx
    # The key is checked by the guard, before the body is read; the dependency only declares the
    # scheme in the OpenAPI document, and only when there is a key.
    security = [Depends(_BEARER)] if settings.api_key is not None else []
    any_route = (408, 413, 500)  # the guard's refusals, and an unexpected error
    v1_route = (*any_route, 503) + ((401,) if settings.api_key is not None else ())

    def ready(request: Request) -> tuple[EmbeddingEngine, MicroBatcher]:
        if request.app.state.status != "ok":
            raise OpenAIError(503, f"the server is {request.app.state.status}", type=OVERLOADED, code="unavailable")
        return request.app.state.engine, request.app.state.batcher

    @app.get(
        "/health",
        response_model=Health,
        operation_id="health",
        responses={503: {"model": Health, "description": "starting or stopping"}, **error_responses(*any_route)},
    )
    async def health(request: Request) -> JSONResponse:
        state = request.app.state
        models = sorted(state.engine.model_names) if state.status == "ok" else []
        body = Health(status=state.status, models=models).model_dump()
        return JSONResponse(body, status_code=200 if state.status == "ok" else 503)

    @app.get(
        "/metrics",
        operation_id="metrics",
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
            **error_responses(*any_route),
        },  # fmt: skip
    )
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/models",
        response_model=ModelList,
        operation_id="list_models",
        dependencies=security,
        responses=error_responses(*v1_route),
    )
    async def list_models(request: Request) -> ModelList:
        served, _ = ready(request)
        return ModelList(
            data=[
                ModelCard(id=name, dimensions=served.embedding_dim, matryoshka_dimensions=served.matryoshka_dims)
                for name in sorted(served.model_names)
            ]
        )

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        operation_id="create_embeddings",
        dependencies=security,
        responses=error_responses(400, 404, 429, *v1_route),
    )
    async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
        served, batcher = ready(request)
        side = served.side_of(body.model)
        if side is None:
            raise OpenAIError(
                404,
                f"the model {body.model!r} does not exist; this server has {sorted(served.model_names)}",
                param="model",
                code="model_not_found",
            )
        if body.dimensions is not None and not 1 <= body.dimensions <= served.embedding_dim:
            raise OpenAIError(
                400,
                f"dimensions must be between 1 and {served.embedding_dim}, got {body.dimensions}",
                param="dimensions",
                code="invalid_value",
            )
        bodies = await _token_bodies(body.input, served)
        if batcher.queued + len(bodies) > settings.max_queued_rows:
            raise OpenAIError(429, "the server is overloaded; retry later", type=OVERLOADED, code="overloaded")
        rows = [served.row(side, ids) for ids in bodies]
        try:
            connection = (request.client.host, request.client.port) if request.client else None
            vectors = await batcher.submit(rows, client=connection)
        except BatcherClosed:
            raise OpenAIError(503, "the server is shutting down", type=OVERLOADED, code="unavailable") from None
        matrix = torch.stack(vectors).numpy()  # (N, D)
        if body.dimensions is not None and body.dimensions < matrix.shape[1]:
            matrix = matrix[:, : body.dimensions]
            matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        matrix = matrix.astype("<f4", copy=False)
        if body.encoding_format == "base64":
            embeddings: list = [base64.b64encode(vector.tobytes()).decode("ascii") for vector in matrix]
        else:
            embeddings = matrix.tolist()
        tokens = sum(len(row.ids) for row in rows)
        request.scope[ACCESS_KEY] = {"model": body.model, "inputs": len(rows), "tokens": tokens}
        answer = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        # orjson writes the same numbers as json.dumps (shortest float64 repr) about 20x faster: 0.5 ms
        # per 576-float answer with json, on the event loop that every other request waits for.
        return Response(orjson.dumps(answer), media_type="application/json")

    def openapi() -> dict[str, Any]:
        """The OpenAPI document; once the model is loaded it carries the model's bounds and is kept."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, openapi_version=app.openapi_version, routes=app.routes
        )
        drop_validation_errors(document)
        if app.state.status == "ok":
            served_limits(document, app.state.engine.embedding_dim, app.state.engine.vocab_size)
            app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def row_length(row: Row) -> int:
    return len(row.ids)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error statuses, each with OpenAI's error body."""
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in sorted(statuses)}


def drop_validation_errors(document: dict[str, Any]) -> None:
    """Remove FastAPI's 422 (this server answers validation failures with 400) and its models, in place."""
    for item in document["paths"].values():
        for operation in item.values():
            operation["responses"].pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)


def check_characters(texts: Sequence[str], max_chars_per_token: int) -> None:
    """Refuse, before tokenizing, an input or a request whose characters could not fit in the token limits."""
    total = 0
    for i, text in enumerate(texts):
        if not text:
            raise OpenAIError(400, f"input[{i}] is an empty string", param="input", code="empty_input")
        if len(text) > MAX_TOKENS_PER_ITEM * max_chars_per_token:
            raise OpenAIError(
                400,
                f"input[{i}] has {len(text)} characters: more than {MAX_TOKENS_PER_ITEM} tokens, the most allowed "
                f"per input (no token of this model covers more than {max_chars_per_token} characters)",
                param="input",
                code="context_length_exceeded",
            )
        total += len(text)
    if total > MAX_TOKENS_PER_REQUEST * max_chars_per_token:
        raise OpenAIError(
            400,
            f"the request has {total} characters: more than {MAX_TOKENS_PER_REQUEST} tokens, the most allowed per "
            "request",
            param="input",
            code="max_tokens_per_request",
        )


async def _token_bodies(value: str | list, served: EmbeddingEngine) -> list[list[int]]:
    """The request's inputs as body token ids, checked against the limits in :mod:`serve.schemas`."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise OpenAIError(400, "input must not be empty", param="input", code="empty_input")
    if isinstance(value[0], int):  # one token array
        value = [value]
    if len(value) > MAX_ITEMS:
        raise OpenAIError(
            400, f"input has {len(value)} items; at most {MAX_ITEMS} are allowed", param="input", code="too_many_items"
        )
    if isinstance(value[0], str):
        check_characters(value, served.max_chars_per_token)
        try:
            bodies = await asyncio.to_thread(served.tokenize, value, MAX_TOKENS_PER_REQUEST)
        except (TypeError, ValueError) as exc:  # a fast tokenizer's TypeError, a slow one's UnicodeError
            logger.warning("the tokenizer refused a request's input: %s", exc)
            raise OpenAIError(
                400, "the tokenizer cannot take this input; send valid Unicode text", param="input", code="invalid_text"
            ) from None
    else:
        bodies = value
        for i, ids in enumerate(bodies):
            if not ids:
                raise OpenAIError(400, f"input[{i}] is an empty token array", param="input", code="empty_input")
            bad = next((t for t in ids if not 0 <= t < served.vocab_size), None)
            if bad is not None:
                raise OpenAIError(
                    400,
                    f"input[{i}] holds token id {bad}; ids must be in [0, {served.vocab_size})",
                    param="input",
                    code="invalid_token_id",
                )
    total = 0
    for i, ids in enumerate(bodies):
        if len(ids) > MAX_TOKENS_PER_ITEM:
            raise OpenAIError(
                400,
                f"input[{i}] has {len(ids)} tokens; at most {MAX_TOKENS_PER_ITEM} are allowed per input",
                param="input",
                code="context_length_exceeded",
            )
        total += len(ids)
    if total > MAX_TOKENS_PER_REQUEST:
        counted = "" if len(bodies) == len(value) else f"at least (counted in its first {len(bodies)} inputs) "
        raise OpenAIError(
            400,
            f"the request has {counted}{total} tokens; at most {MAX_TOKENS_PER_REQUEST} are allowed per request",
            param="input",
            code="max_tokens_per_request",
        )
    return bodies

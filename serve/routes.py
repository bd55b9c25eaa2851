"""The routes: ``POST /v1/embeddings`` (OpenAI's contract), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

Usage counts the tokens each input has as the model runs it: the text's tokens (or the token
array), truncated to ``max_length - 2``, plus the side's two delimiters. A request's work runs
under :func:`serve.lifecycle.watched`: a client that disconnects has its queued rows dropped, and
at shutdown a request still running when the grace is nearly over is answered 503.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from serve.batching import BatcherClosed, MicroBatcher
from serve.engine import EmbeddingEngine, Row
from serve.errors import OVERLOADED, OpenAIError, echo
from serve.inputs import token_bodies
from serve.lifecycle import watched
from serve.metrics import ACCESS_KEY
from serve.schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse, Health, ModelCard, ModelList

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error statuses, each with OpenAI's error body."""
    return {status: {"model": ErrorResponse, "description": ERROR_STATUSES[status]} for status in sorted(statuses)}


def build_router(api_key: str | None) -> APIRouter:
    """The routes, with the bearer scheme and 401 declared in the OpenAPI document when there is a key."""
    router = APIRouter()
    # The key is checked by serve.guard before the body is read; the dependency only declares the scheme.
    security = [Depends(_BEARER)] if api_key is not None else []
    any_route = (408, 413, 500)  # the guard's refusals, and an unexpected error
    keyed = (401,) if api_key is not None else ()
    v1_route = (*any_route, 503, *keyed)
    router.add_api_route("/health", health, methods=["GET"], response_model=Health, operation_id="health",
                         responses={503: {"model": Health, "description": "starting or stopping"},
                                    **error_responses(*any_route)})  # fmt: skip
    router.add_api_route("/metrics", prometheus_metrics, methods=["GET"], operation_id="metrics",
                         response_class=PlainTextResponse, dependencies=security,
                         responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                                    **error_responses(*any_route, *keyed)})  # fmt: skip
    router.add_api_route("/v1/models", list_models, methods=["GET"], response_model=ModelList,
                         operation_id="list_models", dependencies=security,
                         responses=error_responses(*v1_route))  # fmt: skip
    router.add_api_route("/v1/embeddings", create_embeddings, methods=["POST"], response_model=EmbeddingResponse,
                         operation_id="create_embeddings", dependencies=security,
                         responses=error_responses(400, 404, 429, *v1_route))  # fmt: skip
    return router


def ready(request: Request) -> tuple[EmbeddingEngine, MicroBatcher]:
    """The engine and the batcher, or 503 while the server starts or stops."""
    if request.app.state.status != "ok":
        raise OpenAIError(503, f"the server is {request.app.state.status}", type=OVERLOADED, code="unavailable")
    return request.app.state.engine, request.app.state.batcher


async def health(request: Request) -> JSONResponse:
    state = request.app.state
    models = sorted(state.engine.model_names) if state.status == "ok" else []
    body = Health(status=state.status, models=models).model_dump()
    return JSONResponse(body, status_code=200 if state.status == "ok" else 503)


async def prometheus_metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> ModelList:
    served, _ = ready(request)
    return ModelList(
        data=[
            ModelCard(id=name, dimensions=served.embedding_dim, matryoshka_dimensions=served.matryoshka_dims)
            for name in sorted(served.model_names)
        ]
    )


async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    served, batcher = ready(request)
    side = served.side_of(body.model)
    if side is None:
        names = sorted(served.model_names)
        raise OpenAIError(404, f"the model {echo(body.model)} does not exist; this server has {names}", param="model",
                          code="model_not_found")  # fmt: skip
    if body.dimensions is not None and not 1 <= body.dimensions <= served.embedding_dim:
        raise OpenAIError(400, f"dimensions must be between 1 and {served.embedding_dim}, got {echo(body.dimensions)}",
                          param="dimensions", code="invalid_value")  # fmt: skip
    rows, vectors = await watched(request, embed(request, served, batcher, side, body.input))
    tokens = sum(len(row.ids) for row in rows)
    request.scope[ACCESS_KEY] = {"model": body.model, "inputs": len(rows), "tokens": tokens}
    return answer(torch.stack(vectors).numpy(), body, tokens)


async def embed(
    request: Request, served: EmbeddingEngine, batcher: MicroBatcher, side: str, value: str | list
) -> tuple[list[Row], list[torch.Tensor]]:
    """Tokenize the request's inputs within the limits and wait for their rows' vectors."""
    bodies = await token_bodies(value, served, side)
    if batcher.queued + len(bodies) > request.app.state.settings.max_queued_rows:
        raise OpenAIError(429, "the server is overloaded; retry later", type=OVERLOADED, code="overloaded")
    rows = [served.row(side, ids) for ids in bodies]
    connection = (request.client.host, request.client.port) if request.client else None
    try:
        return rows, await batcher.submit(rows, client=connection)
    except BatcherClosed:
        raise OpenAIError(503, "the server is shutting down", type=OVERLOADED, code="unavailable") from None


def answer(matrix: np.ndarray, body: EmbeddingRequest, tokens: int) -> Response:
    """OpenAI's response body for ``matrix`` (N, D), cut to ``dimensions`` and encoded as asked."""
    if body.dimensions is not None and body.dimensions < matrix.shape[1]:
        matrix = matrix[:, : body.dimensions]
        matrix = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    matrix = matrix.astype("<f4", copy=False)
    if body.encoding_format == "base64":
        embeddings: list = [base64.b64encode(vector.tobytes()).decode("ascii") for vector in matrix]
    else:
        embeddings = matrix.tolist()
    content = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": body.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    # orjson writes the same numbers as json.dumps (shortest float64 repr) about 20x faster: 0.5 ms
    # per 576-float answer with json, on the event loop that every other request waits for.
    return Response(orjson.dumps(content), media_type="application/json")

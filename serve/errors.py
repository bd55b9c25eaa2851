"""The one error type of the server and the handlers that give every failure OpenAI's error body.

Body: ``{"error": {"message": str, "type": str, "param": str | None, "code": str | None}}``.
Validation failures of FastAPI (malformed JSON, wrong field types) and unexpected exceptions are
mapped to the same body; an unexpected exception's text is logged, never sent to the client.
Client input quoted in a message goes through :func:`echo`, which cuts it to :data:`ECHO_CHARS`
characters: a 1 MB model name is not sent back, nor written to the log. A client that went away
before its answer (:class:`ClientGone`) is answered 499, nginx's "client closed request", which
only the access log and the metrics see.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
SERVER_ERROR = "server_error"
OVERLOADED = "service_unavailable"
ECHO_CHARS = 64  # characters of client input an error message quotes
CLIENT_CLOSED_REQUEST = 499


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with the full length said."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    shown = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{shown}... ({len(text)} characters)"


class ClientGone(Exception):
    """The client disconnected before its answer: its work was dropped and nobody reads the response."""


class OpenAIError(Exception):
    """An error the client sees as ``status`` with OpenAI's JSON error body.

    Args:
        status: HTTP status code.
        message: human-readable, says what was wrong and what is allowed.
        type: OpenAI error type (``invalid_request_error``, ``authentication_error``, ...).
        param: the request field at fault, if any.
        code: a stable machine-readable code, if any.
        headers: extra response headers (``Allow`` of a 405, ``Connection: close``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **self.headers} if self.status == 401 else self.headers
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


async def _openai_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return exc.response()


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return OpenAIError(400, "the request body is not valid JSON", code="invalid_json").response()
    loc = [echo(part, 32) if isinstance(part, str) and len(part) > 32 else str(part)
           for part in first.get("loc", ()) if part != "body"]  # fmt: skip
    param = loc[0] if loc else None
    message = f"invalid request: {first.get('msg', 'validation failed')}"
    if loc:
        message += f" (at {'.'.join(loc)})"
    return OpenAIError(400, message, param=param, code="invalid_value").response()


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return OpenAIError(exc.status_code, str(exc.detail), code=code, headers=exc.headers).response()  # 405: Allow


async def _client_gone_handler(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return OpenAIError(500, "internal server error", type=SERVER_ERROR).response()


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers so every error response has OpenAI's body."""
    app.add_exception_handler(OpenAIError, _openai_error_handler)
    app.add_exception_handler(ClientGone, _client_gone_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)

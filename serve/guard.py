"""The ASGI middleware in front of the app: the API key, then the body's size and the time it may take to arrive.

FastAPI reads and parses a request's body before it runs the route's dependencies, so a key checked
there comes after the whole body was read (and malformed JSON answered 400 before 401). This guard
works on the raw ASGI messages, before anything is parsed:

1. when a key is set, a request to any path but :data:`PUBLIC_PATHS` (``/health``, for load
   balancers' probes) without ``Authorization: Bearer <key>``: 401, body unread; the OpenAPI
   document and ``/metrics`` are behind the key too;
2. a body sent to a path outside ``/v1`` (no other route takes one): 413, unread;
3. a ``Content-Length`` over ``max_body_bytes``: 413, body unread;
4. the body is read, at most ``max_body_bytes`` of it (413 past that: a chunked body declares no
   length), within ``body_timeout_s`` (408 past that), and before the shutdown's answer deadline
   (503 past that, :class:`serve.lifecycle.Drain`), so a client that sends part of a body holds
   neither memory nor a request open, nor the server at shutdown;
5. the app gets the body as one message, and later ``receive`` calls (disconnects) from the client.

A refusal that leaves body bytes unread closes the connection (``Connection: close``): keeping it
would mean reading the rest of the body anyway.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serve.errors import AUTHENTICATION, OVERLOADED, OpenAIError
from serve.lifecycle import Drain

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]

BODY_PREFIX = "/v1"  # the only routes that take a request body
PUBLIC_PATHS = frozenset({"/health"})  # answered without the key: liveness and readiness probes
CLOSE = {"Connection": "close"}


class _BodyTooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


class RequestGuard:
    """Check the key and bound the body before ``app`` sees a request.

    Args:
        app: the ASGI application behind the guard.
        api_key: the bearer key every request but :data:`PUBLIC_PATHS` needs (``None``: no key).
        max_body_bytes: the largest request body read.
        body_timeout_s: how long the whole body may take to arrive, from the first ``receive``.
        drain: the server's shutdown clock; a body still arriving when it is due answers 503.
    """

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, body_timeout_s: float, drain: Drain
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.drain = drain

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self._refusal(scope["path"], headers)
        if refusal is None:
            try:
                body = await self._read_body_in_time(receive)
            except _Disconnected:
                return
            except OpenAIError as error:
                refusal = error
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _refusal(self, path: str, headers: dict[str, str]) -> OpenAIError | None:
        """What to answer without reading the body, or ``None`` to read it."""
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        refusal = self._key_refusal(path, headers.get("authorization"), CLOSE if has_body else {})
        if refusal is None and has_body and not (path == BODY_PREFIX or path.startswith(BODY_PREFIX + "/")):
            refusal = OpenAIError(413, f"only {BODY_PREFIX}/ routes take a request body", code="body_not_allowed",
                                  headers=CLOSE)  # fmt: skip
        if refusal is None and _declared_length(headers) > self.max_body_bytes:
            refusal = self._too_large()
        return refusal

    def _key_refusal(self, path: str, authorization: str | None, headers: dict[str, str]) -> OpenAIError | None:
        """The 401 for a request without the right key to a path not in :data:`PUBLIC_PATHS`, or ``None``."""
        if self.api_key is None or path in PUBLIC_PATHS:
            return None
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            message = "missing API key: send 'Authorization: Bearer <key>'"
        elif not hmac.compare_digest(credentials.strip().encode(), self.api_key.encode()):
            message = "incorrect API key provided"
        else:
            return None
        return OpenAIError(401, message, type=AUTHENTICATION, code="invalid_api_key", headers=headers)

    def _too_large(self) -> OpenAIError:
        message = f"the request body is over {self.max_body_bytes} bytes"
        return OpenAIError(413, message, code="request_too_large", headers=CLOSE)

    async def _read_body_in_time(self, receive: Receive) -> bytes:
        """The body, or an :class:`OpenAIError`: 413 too large, 408 too slow, 503 still arriving at shutdown."""
        reading = asyncio.ensure_future(asyncio.wait_for(self._read_body(receive), self.body_timeout_s))
        due = asyncio.ensure_future(self.drain.deadline_passed())
        try:
            await asyncio.wait({reading, due}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            due.cancel()
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        if reading.cancelled():
            raise OpenAIError(503, "the server is shutting down", type=OVERLOADED, code="unavailable", headers=CLOSE)
        try:
            return reading.result()
        except _BodyTooLarge:
            raise self._too_large() from None
        except asyncio.TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            raise OpenAIError(408, message, code="request_timeout", headers=CLOSE) from None

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _declared_length(headers: dict[str, str]) -> int:
    """The ``Content-Length`` (0 when absent or not a number: the server's HTTP parser refuses those)."""
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() else 0


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client sends next (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

"""A request's life beyond its route, and the server's: client disconnects, graceful shutdown, slow headers.

- :func:`watched` runs a request's work (tokenizing, waiting for its rows) until it is done, the
  client disconnects (the work is cancelled, its queued rows dropped, and the access log records
  499, not 200) or the shutdown's answer deadline passes (503 with OpenAI's error body).
- :class:`Drain`: at SIGTERM the server refuses new work (503, ``/health`` says ``stopping``) and
  gives the requests in flight until ``graceful_shutdown_s - margin`` to finish; those still
  running then are answered 503 JSON, so uvicorn never has to cancel one (which answered a
  plain-text 500), and the process exits within the grace (:meth:`MicroBatcher.close` leaves a
  forward call still running to its daemon thread).
- :func:`header_timeout_protocol`: uvicorn times out neither a request line nor headers that never
  finish arriving (a keep-alive timeout starts only after a first answer); this protocol closes
  such a connection after ``header_timeout_s`` with a 408.
- :func:`run_server` serves an app with all of the above (``python -m serve`` uses it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request

from serve.errors import OVERLOADED, ClientGone, OpenAIError

logger = logging.getLogger(__name__)
T = TypeVar("T")
DRAIN_MARGIN_S = 1.0  # answered this long before uvicorn's grace ends, so the 503s are written before it cancels


class Drain:
    """The shutdown's clock: ``begin(grace_s)`` starts it; :meth:`deadline_passed` returns when answers are due.

    Holds no event-loop object until it begins, so one app can serve under several loops (tests do).
    """

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.grace_s = 0.0
        self.due = False
        self._waiters: set[asyncio.Future] = set()

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def begin(self, grace_s: float) -> None:
        """Start draining now (in the event loop): in-flight work is answered by ``grace_s - margin``."""
        if self.started:
            return
        self.started_at, self.grace_s = time.monotonic(), grace_s
        answer_in = max(0.0, grace_s - min(DRAIN_MARGIN_S, grace_s / 2))
        asyncio.get_running_loop().call_later(answer_in, self._release)

    async def deadline_passed(self) -> None:
        if self.due:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)

    def _release(self) -> None:
        self.due = True
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)


async def until_disconnected(request: Request) -> None:
    """Return when the client disconnects (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def watched(request: Request, work: Awaitable[T]) -> T:
    """``await work``, unless the client disconnects first (:class:`ClientGone`) or the drain's deadline
    passes first (503); either way ``work`` is cancelled, which drops its rows still queued."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnected(request))
    deadline = asyncio.ensure_future(request.app.state.drain.deadline_passed())
    try:
        await asyncio.wait({task, gone, deadline}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (gone, deadline):
            waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled():
        return task.result()
    if gone.done() and not gone.cancelled():
        raise ClientGone
    raise OpenAIError(503, "the server is shutting down; retry on another replica", type=OVERLOADED,
                      code="unavailable")  # fmt: skip


class GracefulServer(uvicorn.Server):
    """uvicorn's server that starts the app's :class:`Drain` when its shutdown begins (SIGTERM, SIGINT)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.drained_app = app

    async def shutdown(self, sockets: Any = None) -> None:
        self.drained_app.state.status = "stopping"
        self.drained_app.state.drain.begin(self.config.timeout_graceful_shutdown or 0.0)
        await super().shutdown(sockets)


def header_timeout_protocol(header_timeout_s: float) -> type:
    """uvicorn's httptools protocol, closing a connection whose request line and headers take longer than
    ``header_timeout_s`` from the connection (or the previous answer, or the request's first byte) with a 408."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    message = f"the request headers did not arrive within {header_timeout_s:g} s"
    body = json.dumps(OpenAIError(408, message, code="request_timeout").body()).encode()
    head = "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    answer = f"{head}content-length: {len(body)}\r\n\r\n".encode() + body

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle wait
            self._disarm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.transport.write(answer)
                self.transport.close()

    return HeaderTimeoutProtocol


def production_server(app: FastAPI, **config: Any) -> GracefulServer:
    """The server ``python -m serve`` runs ``app`` (from :func:`serve.app.create_app`) with: draining within the
    app's grace, headers timed out, uvicorn's own access log off; ``config``: more ``uvicorn.Config`` arguments."""
    settings = app.state.settings
    server_config = uvicorn.Config(
        app,
        access_log=False,  # serve.access writes one structured line per request instead
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        http=header_timeout_protocol(settings.header_timeout_s),
        **config,
    )
    return GracefulServer(server_config, app)


def run_server(app: FastAPI, host: str, port: int, log_level: str) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM/SIGINT (:func:`production_server`)."""
    production_server(app, host=host, port=port, log_level=log_level).run()

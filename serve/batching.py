"""Micro-batching: rows from concurrent requests are queued and run through the model together.

One asyncio worker task collects rows until the padded batch would exceed ``max_batch_tokens``
(rows x longest row), ``max_batch_size`` rows are taken, or ``max_wait_ms`` has passed since its
first row was taken. It waits longer, up to ``return_wait_ms``, while a client it has just
answered is expected back (:class:`ReturningClients`): a keep-alive connection that has sent
before and came back quickly last time. Without that wait, closed-loop clients (N workers
each sending the next request when the last is answered, as indexing jobs and evaluation
harnesses do) settle into two half-size batches that alternate, each paying a full forward call,
with the HTTP work of one half stealing cores from the model running the other; waiting a few
milliseconds for the returning half makes one batch of all N.

Rows are taken one request at a time in turn (each request's rows in order), so a small request
that arrives while a 2048-input one is being processed joins the next batch instead of waiting
behind all of its rows. The batch runs in a single-thread executor, so the event loop keeps
accepting requests while the model works and rows that arrive meanwhile form the next batch. A
row longer than ``max_batch_tokens`` runs alone.

``close()`` stops new submissions and returns once every queued row has been answered, which is
what makes shutdown finish in-flight requests; ``close(timeout)`` waits at most that long, then
fails what is left with :class:`BatcherClosed` and leaves a forward call still running to the
model thread, a daemon thread that does not hold the process at exit (a micro-batch of a large
model on a CPU can run for tens of seconds, longer than any shutdown grace).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")


class BatcherClosed(RuntimeError):
    """Raised by :meth:`MicroBatcher.submit` once the batcher is closing."""


class DaemonThreadExecutor(Executor):
    """Runs submitted calls one at a time, in order, on one daemon thread.

    ``ThreadPoolExecutor`` joins its threads when the interpreter exits, so a forward call still
    running at shutdown would hold the process until it ends; this thread is a daemon.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[override]
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._calls.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the awaiting coroutine, as ThreadPoolExecutor does
                future.set_exception(exc)


@dataclass
class _Pending(Generic[Row]):
    row: Row
    length: int
    future: asyncio.Future = field(repr=False)
    request: _Request = field(repr=False)


@dataclass
class _Request(Generic[Row]):
    """One submission: its rows still queued, how many are unanswered, and who sent it."""

    client: Hashable | None
    unanswered: int
    rows: deque[_Pending[Row]] = field(default_factory=deque)


class ReturningClients:
    """Which clients the batcher has just answered and expects to send again within a few milliseconds.

    A client is a connection (``(host, port)``): a keep-alive connection sends its requests one
    after another. After its answer a client is expected back within twice its last gap (answer to
    next request) plus a millisecond, if that gap was at most ``horizon_s``; a connection on its
    first request has no gap yet, so clients that open a connection per request are never waited
    for, nor are clients whose requests come further apart than the horizon. The gaps of the most
    recent ``capacity`` clients are remembered. ``last_unexpected`` is when a request last came
    that was not expected (a first request, a slow or overdue client, or one of no known client).
    """

    def __init__(self, horizon_s: float, capacity: int = 4096) -> None:
        self.horizon_s = horizon_s
        self.capacity = capacity
        self._gaps: OrderedDict[Hashable, float | None] = OrderedDict()  # most recent last
        self._answered: dict[Hashable, float] = {}  # answered, not back yet: when
        self._due: dict[Hashable, float] = {}  # of those, the ones expected back: by when
        self.last_unexpected = float("-inf")

    def arrived(self, client: Hashable | None, now: float) -> None:
        if client is None:
            self.last_unexpected = now
            return
        answered = self._answered.pop(client, None)
        if self._due.pop(client, float("-inf")) < now:
            self.last_unexpected = now
        gap = now - answered if answered is not None else self._gaps.get(client)
        self._gaps.pop(client, None)
        self._gaps[client] = gap
        while len(self._gaps) > self.capacity:
            forgotten, _ = self._gaps.popitem(last=False)
            self._answered.pop(forgotten, None)
            self._due.pop(forgotten, None)

    def answered(self, client: Hashable, now: float) -> None:
        if client not in self._gaps:
            return
        self._answered[client] = now
        gap = self._gaps[client]
        if gap is not None and gap <= self.horizon_s:
            self._due[client] = now + min(2 * gap + 0.001, self.horizon_s)

    def expected_until(self, now: float) -> float:
        """The latest time a client still expected back is due by (-inf: none is); forgets the overdue."""
        for client in [client for client, due in self._due.items() if due <= now]:
            del self._due[client]
        return max(self._due.values(), default=float("-inf"))


@dataclass
class BatchStats:
    """Counters for ``/health`` and tests."""

    batches: int = 0
    rows: int = 0
    largest_batch: int = 0


class MicroBatcher(Generic[Row, Result]):
    """Queue rows from many requests and run them in batches off the event loop.

    Args:
        run_batch: called in the worker thread with a list of rows, returns one result per row.
        length_of: a row's length in tokens (what the model runs, delimiters included).
        max_batch_tokens: upper bound on ``rows x longest row`` of one batch.
        max_wait_ms: how long to wait for more rows after the first one of a batch.
        max_batch_size: upper bound on the rows of one batch.
        return_wait_ms: how long, at most, a batch waits for clients just answered that are
            expected back (see :class:`ReturningClients`); 0: never.
        return_wait_tokens: a batch with this many real tokens stops waiting for them: past it a
            forward call costs about the same per token whatever the batch size, so more rows
            would not pay for the model idling meanwhile (on 2 CPU cores, SmolLM2-135M packed in
            256-token sequences ran 43 / 47 / 49 / 52 / 52 rows/s at 8 / 16 / 24 / 32 / 48 rows
            of ~15 tokens, 44 at 64).

    With ``return_wait_ms`` > 0, ``max_wait_ms`` applies only while unexpected requests come (one
    arrived within the last ``return_wait_ms``): when every recent request came from a returning
    client and all those expected are in, nobody else is likely to send within ``max_wait_ms``, so
    the batch runs at once (a single keep-alive client pays no wait at all).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Row]], Sequence[Result]],
        length_of: Callable[[Row], int],
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_batch_size: int = 256,
        return_wait_ms: float = 0.0,
        return_wait_tokens: int = 512,
    ) -> None:
        if max_batch_tokens < 1 or max_batch_size < 1 or max_wait_ms < 0 or return_wait_ms < 0:
            raise ValueError(
                "need max_batch_tokens >= 1, max_batch_size >= 1, max_wait_ms >= 0 and return_wait_ms >= 0, got "
                f"{max_batch_tokens}, {max_batch_size}, {max_wait_ms}, {return_wait_ms}"
            )
        self._run_batch = run_batch
        self._length_of = length_of
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.return_wait_s = return_wait_ms / 1000.0
        self.return_wait_tokens = return_wait_tokens
        self.clients = ReturningClients(self.return_wait_s)
        self.stats = BatchStats()
        self._requests: deque[_Request[Row]] = deque()  # one queue per request, served in turn
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: DaemonThreadExecutor | None = None
        self._closing = False
        self._running: list[_Pending[Row]] = []  # the batch in the model thread

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("the batcher is already started")
        self._wakeup = asyncio.Event()
        self._executor = DaemonThreadExecutor("model")
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new rows and answer every queued row, then stop the worker and its thread.

        ``timeout``: wait at most this many seconds; then the rows not answered fail with
        :class:`BatcherClosed` and a forward call still running is left to the daemon model thread.
        """
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        finished = True
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except asyncio.TimeoutError:
                finished = False
                self._worker.cancel()
                self._fail_unanswered()
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=finished)
            self._executor = None

    def _fail_unanswered(self) -> None:
        for pending in [*self._running, *(p for request in self._requests for p in request.rows)]:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))
        self._requests.clear()
        self._running = []

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    @property
    def queued(self) -> int:
        return sum(len(request.rows) for request in self._requests)

    # ---- submission ---------------------------------------------------------------------------

    async def submit(self, rows: Sequence[Row], client: Hashable | None = None) -> list[Result]:
        """Queue rows and wait for their results, in order.

        ``client``: the connection the rows came on (``(host, port)``), so the batcher can wait
        for clients it expects back (see :class:`ReturningClients`); None: not tracked.
        """
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        request: _Request[Row] = _Request(client if self.return_wait_s > 0 else None, len(rows))
        pending = [_Pending(row, self._length_of(row), loop.create_future(), request) for row in rows]
        if self.return_wait_s > 0:
            self.clients.arrived(request.client, time.monotonic())
        if pending:
            request.rows.extend(pending)
            self._requests.append(request)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except BaseException:
            for p in pending:  # a cancelled request frees its queued rows, at once (``queued`` counts them no more)
                p.future.cancel()
            request.rows.clear()
            raise

    # ---- worker -------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._head():
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._collect()
            if not batch:
                continue
            self._running = batch
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, [p.row for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} rows")
            except Exception as exc:  # the batch's requests fail; the worker lives on
                logger.exception("batch of %d rows failed", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            answered = time.monotonic()
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
                p.request.unanswered -= 1
                if p.request.unanswered == 0 and p.request.client is not None:
                    self.clients.answered(p.request.client, answered)

    def _head(self) -> deque[_Pending[Row]] | None:
        """The queue of the request whose turn it is, with its cancelled rows dropped; None when all are empty."""
        while self._requests:
            rows = self._requests[0].rows
            while rows and rows[0].future.done():  # cancelled by its request
                rows.popleft()
            if rows:
                return rows
            self._requests.popleft()
        return None

    async def _collect(self) -> list[_Pending[Row]]:
        """Take rows, a request at a time in turn, within the token and size budgets.

        Waits up to ``max_wait_ms`` after the first row for any more (while unexpected requests
        come, when ``return_wait_ms`` is set), and up to ``return_wait_ms`` while a client just
        answered is expected back and the batch is under ``return_wait_tokens``.
        """
        assert self._wakeup is not None
        batch: list[_Pending[Row]] = []
        longest = real = 0
        started = time.monotonic()
        while True:
            while (rows := self._head()) is not None:
                head = rows[0]
                width = max(longest, head.length)
                if batch and (width * (len(batch) + 1) > self.max_batch_tokens or len(batch) >= self.max_batch_size):
                    return batch
                batch.append(rows.popleft())
                longest, real = width, real + head.length
                self._requests.rotate(-1)  # the next request's turn
            now = time.monotonic()
            deadline = started + self.max_wait_s
            if self.return_wait_s > 0:
                if now - self.clients.last_unexpected > self.return_wait_s:
                    deadline = started  # only returning clients lately: none but those expected will come
                if real < self.return_wait_tokens:
                    deadline = max(deadline, min(started + self.return_wait_s, self.clients.expected_until(now)))
            remaining = deadline - now
            if self._closing or remaining <= 0 or not batch:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return batch

"""Micro-batching: rows from concurrent requests are queued and run through the model together.

One asyncio worker task collects rows until the padded batch would exceed ``max_batch_tokens``
(rows x longest row), ``max_batch_size`` rows are taken, or ``max_wait_ms`` has passed since its
first row was taken. Rows are taken one request at a time in turn (each request's rows in order),
so a small request that arrives while a 2048-input one is being processed joins the next batch
instead of waiting behind all of its rows. The batch runs in a
single-thread executor, so the event loop keeps accepting requests while the model works and
rows that arrive meanwhile form the next batch. A row longer than ``max_batch_tokens`` runs alone.

``close()`` stops new submissions and returns once every queued row has been answered, which is
what makes shutdown finish in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")


class BatcherClosed(RuntimeError):
    """Raised by :meth:`MicroBatcher.submit` once the batcher is closing."""


@dataclass
class _Pending(Generic[Row]):
    row: Row
    length: int
    future: asyncio.Future = field(repr=False)


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
    """

    def __init__(
        self,
        run_batch: Callable[[list[Row]], Sequence[Result]],
        length_of: Callable[[Row], int],
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 5.0,
        max_batch_size: int = 256,
    ) -> None:
        if max_batch_tokens < 1 or max_batch_size < 1 or max_wait_ms < 0:
            raise ValueError(
                "need max_batch_tokens >= 1, max_batch_size >= 1 and max_wait_ms >= 0, got "
                f"{max_batch_tokens}, {max_batch_size}, {max_wait_ms}"
            )
        self._run_batch = run_batch
        self._length_of = length_of
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.stats = BatchStats()
        self._requests: deque[deque[_Pending[Row]]] = deque()  # one queue per request, served in turn
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is not None:
            raise RuntimeError("the batcher is already started")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def close(self) -> None:
        """Refuse new rows, answer every queued row, then stop the worker and its thread."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    @property
    def queued(self) -> int:
        return sum(len(rows) for rows in self._requests)

    # ---- submission ---------------------------------------------------------------------------

    async def submit(self, rows: Sequence[Row]) -> list[Result]:
        """Queue rows and wait for their results, in order."""
        if not self.running:
            raise BatcherClosed("the server is shutting down")
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        pending = [_Pending(row, self._length_of(row), loop.create_future()) for row in rows]
        if pending:
            self._requests.append(deque(pending))
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        except BaseException:
            for p in pending:  # a cancelled request frees its queued rows
                p.future.cancel()
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
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    def _head(self) -> deque[_Pending[Row]] | None:
        """The queue of the request whose turn it is, with its cancelled rows dropped; None when all are empty."""
        while self._requests:
            rows = self._requests[0]
            while rows and rows[0].future.done():  # cancelled by its request
                rows.popleft()
            if rows:
                return rows
            self._requests.popleft()
        return None

    async def _collect(self) -> list[_Pending[Row]]:
        """Take rows, a request at a time in turn, within the token and size budgets, waiting up to ``max_wait_ms``."""
        assert self._wakeup is not None
        batch: list[_Pending[Row]] = []
        longest = 0
        deadline = time.monotonic() + self.max_wait_s
        while True:
            while (rows := self._head()) is not None:
                head = rows[0]
                width = max(longest, head.length)
                if batch and (width * (len(batch) + 1) > self.max_batch_tokens or len(batch) >= self.max_batch_size):
                    return batch
                batch.append(rows.popleft())
                longest = width
                self._requests.rotate(-1)  # the next request's turn
            remaining = deadline - time.monotonic()
            if self._closing or remaining <= 0 or not batch:
                return batch
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                return batch

"""The micro-batcher alone, with a stub model: budgets, waiting, off-loop execution, failures, draining."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve.batching import BatcherClosed, MicroBatcher, ReturningClients


class Recorder:
    """A stub ``run_batch``: doubles each row and records the batches it saw and the thread it ran on."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, rows: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(rows))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError("boom")
        return [2 * row for row in rows]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_concurrent_submissions_share_batches_and_keep_order():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_batch_tokens=1000, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))
        await batcher.close()
        return results, batcher.stats

    results, stats = run(main())
    assert results == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert len(recorder.batches) == 1 and stats.rows == 20 and stats.largest_batch == 20


def test_padded_token_budget_and_batch_size():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: row, max_batch_tokens=20, max_wait_ms=20)
        batcher.start()
        # rows are their own lengths: [4, 4, 4, 4, 4] fit 20 padded tokens; a 10 after them would make 6 x 10
        await asyncio.gather(batcher.submit([4] * 5), batcher.submit([10, 10]), batcher.submit([50]))
        await batcher.close()

    run(main())
    assert sorted(row for batch in recorder.batches for row in batch) == [4] * 5 + [10, 10, 50]
    assert [50] in recorder.batches  # an over-budget row runs alone
    for batch in recorder.batches:
        assert len(batch) * max(batch) <= 20 or len(batch) == 1

    sized = Recorder()

    async def by_size():
        batcher = MicroBatcher(sized, length_of=lambda row: 1, max_batch_size=3, max_wait_ms=20)
        batcher.start()
        await batcher.submit(list(range(7)))
        await batcher.close()

    run(by_size())
    assert [len(batch) for batch in sized.batches] == [3, 3, 1]


def test_waits_at_most_max_wait_ms_for_more_rows():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_wait_ms=400)
        batcher.start()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)  # arrives inside the window (generous for a busy machine): same batch
        second = asyncio.create_task(batcher.submit([2]))
        await asyncio.gather(first, second)
        started = time.monotonic()
        await batcher.submit([3])  # alone: answered after about max_wait_ms
        waited = time.monotonic() - started
        await batcher.close()
        return waited

    waited = run(main())
    assert recorder.batches == [[1, 2], [3]]
    assert 0.39 <= waited < 10


def test_model_runs_off_the_event_loop():
    recorder = Recorder(delay=0.5)

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_wait_ms=0)
        batcher.start()
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit([1])
        task.cancel()
        await batcher.close()
        return ticks

    ticks = run(main())
    assert ticks >= 5  # the loop kept running while the batch slept 0.5 s in the model thread
    assert recorder.threads and threading.main_thread().name not in recorder.threads


def test_a_failing_batch_fails_its_requests_only():
    recorder = Recorder(fail_on=13)

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_wait_ms=0)
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([13])
        result = await batcher.submit([2])
        await batcher.close()
        return result

    assert run(main()) == [4]


def test_close_answers_queued_rows_then_refuses():
    recorder = Recorder(delay=0.1)

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0.05)  # the first batch is running, the rest are queued
        await batcher.close()
        assert sorted(batch[0] for batch in recorder.batches) == list(range(5))  # every queued row ran
        with pytest.raises(BatcherClosed):
            await batcher.submit([9])
        return await asyncio.gather(*pending)

    assert run(main()) == [[0], [2], [4], [6], [8]]


def test_close_with_a_timeout_fails_what_is_left_and_does_not_wait_for_the_model():
    gate = threading.Event()

    def stuck(rows: list[int]) -> list[int]:
        gate.wait(30)
        return rows

    async def main() -> tuple[float, list]:
        batcher = MicroBatcher(stuck, length_of=lambda row: 1, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit([i])) for i in range(3)]
        await asyncio.sleep(0.05)  # the first row is in the model, the others queued
        started = time.monotonic()
        await batcher.close(timeout=0.2)
        took = time.monotonic() - started
        return took, await asyncio.gather(*pending, return_exceptions=True)

    try:
        took, results = run(main())
    finally:
        gate.set()
    assert took < 10  # the 30 s forward call is left to the daemon model thread
    assert all(isinstance(result, BatcherClosed) for result in results)


def test_a_cancelled_request_leaves_the_queue_at_once():
    async def main() -> tuple[int, int]:
        batcher = MicroBatcher(Recorder(delay=0.2), length_of=lambda row: 1, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit([2, 3, 4]))
        await asyncio.sleep(0.02)
        before = batcher.queued
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        after = batcher.queued  # the first batch is still running: the worker has not looked at the queue
        await first
        await batcher.close()
        return before, after

    assert run(main()) == (3, 0)


def test_cancelled_request_rows_are_skipped():
    recorder = Recorder(delay=0.1)

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        running = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)
        dropped = asyncio.create_task(batcher.submit([2]))
        await asyncio.sleep(0)
        dropped.cancel()
        await running
        await batcher.close()

    run(main())
    assert recorder.batches == [[1]]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        MicroBatcher(Recorder(), length_of=len, max_batch_tokens=0)
    with pytest.raises(ValueError, match="return_wait_ms"):
        MicroBatcher(Recorder(), length_of=len, return_wait_ms=-1)


def test_a_client_is_expected_back_only_after_a_quick_return():
    clients = ReturningClients(horizon_s=0.1)
    clients.arrived("a", 0.0)
    clients.answered("a", 1.0)
    assert clients.expected_until(1.0) == float("-inf")  # its first request: no gap known
    clients.arrived("a", 1.02)  # came back after 20 ms
    assert clients.expected_until(1.03) == float("-inf")  # not answered yet
    clients.answered("a", 2.0)
    assert clients.expected_until(2.0) == pytest.approx(2.041)  # twice its gap, plus 1 ms
    assert clients.expected_until(2.05) == float("-inf")  # overdue: forgotten
    clients.arrived("slow", 0.0)
    clients.answered("slow", 0.0)
    clients.arrived("slow", 0.5)  # 500 ms between answer and request: past the horizon
    clients.answered("slow", 3.0)
    assert clients.expected_until(3.0) == float("-inf")
    clients.answered("never-seen", 3.0)
    assert clients.expected_until(3.0) == float("-inf")


def test_returning_clients_are_remembered_up_to_the_capacity():
    clients = ReturningClients(horizon_s=1.0, capacity=2)
    for name in ("a", "b", "c"):
        clients.arrived(name, 0.0)
        clients.answered(name, 0.0)
        clients.arrived(name, 0.01)
        clients.answered(name, 1.0)
    assert clients.expected_until(1.0) == pytest.approx(1.021)
    clients.arrived("d", 1.0)  # a fourth client: the oldest one ("b", as "a" was evicted by "c") goes
    assert len(clients._gaps) == 2 and "c" in clients._due and "b" not in clients._due


def closed_loop(return_wait_ms: float, cycles: int = 6, return_wait_tokens: int = 256) -> list[list[int]]:
    """Two keep-alive clients, each sending its next request 20 ms after an answer, the second starting 40 ms late."""
    recorder = Recorder(delay=0.1)

    async def main():
        batcher = MicroBatcher(
            recorder,
            length_of=lambda row: 1,
            max_wait_ms=0,
            return_wait_ms=return_wait_ms,
            return_wait_tokens=return_wait_tokens,
        )
        batcher.start()

        async def client(name: str, start: float) -> None:
            await asyncio.sleep(start)
            for _ in range(cycles):
                await batcher.submit([1 if name == "a" else 2], client=name)
                await asyncio.sleep(0.02)

        await asyncio.gather(client("a", 0.0), client("b", 0.04))
        await batcher.close()

    run(main())
    return recorder.batches


def test_clients_just_answered_are_waited_for_so_closed_loop_batches_merge():
    # Without the wait the two clients settle into alternating one-row batches, each a forward call;
    # with it, the batch waits the 20 ms for the client it has just answered and both share one.
    assert max(len(batch) for batch in closed_loop(return_wait_ms=0)) == 1
    merged = closed_loop(return_wait_ms=500)
    assert sum(sorted(batch) == [1, 2] for batch in merged) >= 3  # measured: 4 of 8 batches for the 12 requests
    # a batch that already holds return_wait_tokens real tokens (here its first 1-token row) runs at once
    assert max(len(batch) for batch in closed_loop(return_wait_ms=500, return_wait_tokens=1)) == 1


def test_a_connection_per_request_is_never_waited_for():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_wait_ms=0, return_wait_ms=5000)
        batcher.start()
        started = time.monotonic()
        for port in range(5):  # a fresh connection each time, as a client without keep-alive opens
            await batcher.submit([port], client=("127.0.0.1", port))
        waited = time.monotonic() - started
        await batcher.close()
        return waited

    assert run(main()) < 2.5  # one wait of the 5 s bound would exceed it


def test_max_wait_applies_only_while_unexpected_requests_come():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_wait_ms=300, return_wait_ms=100)
        batcher.start()
        took = []
        for row in range(5):  # one keep-alive client, sending again as soon as it is answered
            started = time.monotonic()
            await batcher.submit([row], client=("127.0.0.1", 1))
            took.append(time.monotonic() - started)
        await asyncio.sleep(0.15)
        started = time.monotonic()
        await batcher.submit([5])  # no known client: unexpected, so the batch waits max_wait_ms again
        took.append(time.monotonic() - started)
        await batcher.close()
        return took

    took = run(main())
    # its first two requests are unexpected (no gap known yet) and wait 300 ms each for company;
    # once it is expected back, and nobody unexpected came within 100 ms, its batches run at once
    assert min(took[:2]) >= 0.29 and sum(took[2:5]) < 0.29 and took[5] >= 0.29
    assert recorder.batches == [[0], [1], [2], [3], [4], [5]]


def test_length_chunks_bound_padding_and_cover_every_row():
    from serve.engine import length_chunks

    lengths = [5, 50, 6, 48, 7, 120, 5, 49]
    chunks = length_chunks(lengths, slack=1.25)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert max(sizes) * len(sizes) <= 1.25 * sum(sizes)
    assert len(chunks) == 3  # the short ones, the ~50s, and 120 alone
    assert length_chunks([]) == []


def test_a_costly_forward_call_buys_padding_and_zero_cost_changes_nothing():
    from serve.engine import length_chunks

    lengths = [5, 50, 6, 48, 7, 120, 5, 49]
    assert length_chunks(lengths, 1.25, call_overhead_tokens=0.0) == length_chunks(lengths, 1.25)
    # 200 tokens a call: the short rows join the ~50s (7 x 50 <= 1.25 x 170 + 200), 120 stays alone (960 > 562.5)
    merged = length_chunks(lengths, 1.25, call_overhead_tokens=200.0)
    assert sorted(i for chunk in merged for i in chunk) == list(range(len(lengths)))
    assert len(merged) == 2 and merged[-1] == [5]
    assert length_chunks(lengths, 1.25, call_overhead_tokens=10_000.0) == [sorted(range(8), key=lambda i: lengths[i])]


def test_the_measured_call_overhead_sets_the_engine_and_keeps_its_vectors(tiny_embedder):
    import torch

    from serve.engine import EmbeddingEngine

    engine = EmbeddingEngine(tiny_embedder, "tiny", max_length=64)
    texts = ["short", "a somewhat longer sentence than that", "x " * 20, "mid length text here"]
    rows = [engine.row("query", body) for body in engine.tokenize(texts)]
    tight = torch.stack(engine.run(rows))
    overhead = engine.measure_call_overhead(repeats=1)
    assert overhead >= 0 and engine.call_overhead_tokens == overhead
    engine.call_overhead_tokens = 10_000.0  # one padded chunk
    torch.testing.assert_close(torch.stack(engine.run(rows)), tight, atol=1e-5, rtol=0)


def test_a_small_request_joins_the_next_batch_not_the_end_of_a_large_one():
    recorder = Recorder(delay=0.05)

    async def main():
        batcher = MicroBatcher(recorder, length_of=lambda row: 1, max_batch_size=4, max_wait_ms=0)
        batcher.start()
        large = asyncio.create_task(batcher.submit(list(range(40))))
        await asyncio.sleep(0.02)  # the large request's first batch is running
        small = await batcher.submit([1000])
        done = len(recorder.batches)
        results = await large
        await batcher.close()
        return small, done, results

    small, done, results = run(main())
    assert small == [2000] and results == [2 * i for i in range(40)]
    assert done <= 3  # answered within the next batch or so, not after all 10 of the large request's
    assert any(1000 in batch for batch in recorder.batches[:3])
    order = [row for batch in recorder.batches for row in batch if row != 1000]
    assert order == list(range(40))  # a request's own rows keep their order


def test_a_packed_micro_batch_runs_in_one_call_with_the_vectors_of_length_chunks(tiny_embedder, monkeypatch):
    import torch

    from serve.engine import EmbeddingEngine

    engine = EmbeddingEngine(tiny_embedder, "tiny", max_length=64)
    texts = ["short", "a somewhat longer sentence than that", "x " * 40, "mid length text here", "y"]
    sides = ["query", "doc", "query", "doc", "query"]  # a micro-batch may mix sides
    rows = [engine.row(side, body) for side, body in zip(sides, engine.tokenize(texts), strict=True)]
    chunked = torch.stack(engine.run(rows))
    calls = []
    forward = engine.model.forward
    monkeypatch.setattr(engine.model, "forward", lambda *a, **k: calls.append(k) or forward(*a, **k))
    engine.pack_tokens = 16  # narrower than the 42-token row: it gets a sequence of its own
    packed = torch.stack(engine.run(rows))
    assert len(calls) == 1 and calls[0]["pack_tokens"] >= 42
    torch.testing.assert_close(packed, chunked, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(engine.run(rows[:1])), chunked[:1], atol=1e-5, rtol=0)

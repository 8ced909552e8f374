"""ModelWorker under faults and unfair loads: a dying loop, abandoned requests, one huge request."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.engine import worker as worker_module
from embedserve.errors import NotReady
from tests.support.workers import call, make_worker


async def eventually(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


# ---- the batching loop dies outside a batch -------------------------------------------------


async def test_a_dead_loop_fails_waiting_requests_at_once_reports_it_and_restarts(monkeypatch):
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF", (0.3, 1.0))
    backend = FakeBackend(delay=0.2)
    worker = make_worker(backend, max_batch_size=1, threads=2)
    running = asyncio.create_task(call(worker, [[1, 5, 2]]))  # its batch is on a thread; the other is free
    await eventually(lambda: backend.batch_sizes == [1])
    backend.kill_loop = True  # the loop's next planning (as soon as work arrives) raises
    waiting = asyncio.create_task(call(worker, [[1, 6, 2], [1, 7, 2]]))
    started = time.perf_counter()
    with pytest.raises(NotReady, match="engine fault") as info:
        await asyncio.wait_for(waiting, timeout=2)
    assert time.perf_counter() - started < 0.15  # at once, not after a timeout
    assert info.value.status == 503 and info.value.retry_after >= 1
    assert worker.failure is not None
    with pytest.raises(NotReady, match="engine fault"):  # new requests too, while it is down
        with worker.admit():
            pass
    # the batch already on the thread was not part of the loop: it completes
    np.testing.assert_array_equal((await running)[0], backend.vector_for([1, 5, 2]))
    # restarted after the back-off: serving again, healthy again
    await eventually(lambda: worker.failure is None, timeout=3)
    result = await asyncio.wait_for(call(worker, [[1, 8, 2]]), timeout=2)
    np.testing.assert_array_equal(result[0], backend.vector_for([1, 8, 2]))
    assert [1, 6, 2] not in [ids for batch in backend.batches for ids in batch]  # the failed ones never ran
    assert worker.depth == 0
    await worker.close()


async def test_a_loop_that_keeps_dying_backs_off(monkeypatch):
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF", (0.05, 0.2))
    backend = FakeBackend()
    worker = make_worker(backend)
    for expected_backoff in (0.1, 0.2, 0.2):
        backend.kill_loop = True
        with pytest.raises(NotReady):
            await call(worker, [[1, 5, 2]])
        assert worker._backoff == pytest.approx(expected_backoff)  # noqa: SLF001
        await eventually(lambda: worker.failure is None)
    assert np.asarray(await call(worker, [[1, 9, 2]])).shape == (1, 8)
    await worker.close()


async def test_close_during_the_back_off_does_not_restart_the_loop(monkeypatch):
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF", (0.1, 0.1))
    backend = FakeBackend()
    worker = make_worker(backend)
    backend.kill_loop = True
    with pytest.raises(NotReady):
        await call(worker, [[1, 5, 2]])
    await worker.close(timeout=0)
    await asyncio.sleep(0.2)
    assert worker._task is None  # noqa: SLF001


# ---- abandoned requests leave the queue --------------------------------------------------


async def test_a_cancelled_request_is_dropped_before_it_is_computed():
    backend = FakeBackend(delay=0.2)
    worker = make_worker(backend, max_batch_size=1, threads=1)
    first = asyncio.create_task(call(worker, [[1, 5, 2]]))
    await eventually(lambda: len(backend.batches) == 1)  # the first is on the thread
    abandoned = asyncio.create_task(call(worker, [[1, 6, 2], [1, 7, 2], [1, 8, 2]]))
    kept = asyncio.create_task(call(worker, [[1, 9, 2]]))
    await asyncio.sleep(0.02)
    abandoned.cancel()  # what a client disconnect or --request-timeout does to the waiting request
    await first
    await kept
    assert backend.batches == [[[1, 5, 2]], [[1, 9, 2]]]  # the abandoned inputs never ran
    assert worker.depth == 0  # and its queue slot was given back
    await worker.close()


# ---- fair turns: a small request behind a huge one ---------------------------------------


async def test_a_small_request_behind_a_huge_one_waits_for_running_batches_not_the_whole_request():
    backend = FakeBackend(delay=0.01)
    worker = make_worker(backend, max_batch_size=4, threads=2)
    huge = asyncio.create_task(call(worker, [[1, 10 + i % 50, 2] for i in range(400)]))  # 100 batches
    await eventually(lambda: len(backend.batches) >= 10)
    batches_before = len(backend.batches)
    small = await asyncio.wait_for(call(worker, [[1, 777, 2]]), timeout=5)
    position = next(k for k, batch in enumerate(backend.batches) if [1, 777, 2] in batch)
    # behind at most the batches running when it arrived (2 threads) and the one being planned
    assert position - batches_before <= 3, (position, batches_before)
    np.testing.assert_array_equal(small[0], backend.vector_for([1, 777, 2]))
    assert not huge.done()
    result = await huge
    assert result.shape == (400, 8)
    await worker.close()


async def test_the_huge_request_still_gets_its_share_while_small_ones_keep_coming():
    backend = FakeBackend(delay=0.005)
    worker = make_worker(backend, max_batch_size=4, threads=1)
    huge = asyncio.create_task(call(worker, [[1, 10 + i % 50, 2] for i in range(80)]))  # 20 batches
    stop = time.monotonic() + 10

    async def stream():  # a steady stream of single inputs, one waiting at every moment
        i = 0
        while not huge.done() and time.monotonic() < stop:
            await call(worker, [[1, 500 + i % 100, 2]])
            i += 1

    streams = [asyncio.create_task(stream()) for _ in range(3)]
    result = await asyncio.wait_for(huge, timeout=8)  # first-come-first-served would have been fine;
    assert result.shape == (80, 8)  # "small first" would starve it: fair turns must not
    await asyncio.gather(*streams)
    await worker.close()

"""ModelWorker: dynamic batching across callers, backpressure, fault isolation."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.errors import BackendFailure, NotReady, Overloaded
from tests.support.workers import call, make_worker


class Tracking(FakeBackend):
    """A FakeBackend that records the most batches it ever ran at once (`peak`)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.active, self.peak = 0, 0
        self._count_lock = threading.Lock()

    def forward(self, batch):
        with self._count_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return super().forward(batch)
        finally:
            with self._count_lock:
                self.active -= 1


async def test_concurrent_single_requests_share_batches_and_get_their_own_vectors():
    backend = FakeBackend(delay=0.01)
    worker = make_worker(backend, max_batch_size=16)
    seqs = [[1, 10 + i, 2] for i in range(64)]
    results = await asyncio.gather(*(call(worker, [s]) for s in seqs))
    assert sum(backend.batch_sizes) == 64
    assert len(backend.batch_sizes) <= 16, backend.batch_sizes  # far fewer than 64 batches
    assert max(backend.batch_sizes) <= 16  # never over the cap
    for seq, result in zip(seqs, results, strict=True):
        assert result.shape == (1, 8)
        np.testing.assert_array_equal(result[0], backend.vector_for(seq))
    await worker.close()


async def test_one_request_keeps_its_order_across_batches():
    backend = FakeBackend()
    worker = make_worker(backend, max_batch_size=3)
    # lengths deliberately unsorted: the batcher reorders, the caller must not notice
    seqs = [[1, *range(10, 10 + n), 2] for n in (5, 1, 9, 3, 7, 2, 8)]
    result = await call(worker, seqs)
    assert len(backend.batch_sizes) == 3
    for row, seq in zip(result, seqs, strict=True):
        np.testing.assert_array_equal(row, backend.vector_for(seq))
    await worker.close()


async def test_queue_bound_refuses_without_touching_the_model():
    backend = FakeBackend(delay=0.2)
    worker = make_worker(backend, max_queue=2)
    first = asyncio.create_task(call(worker, [[1, 5, 2]]))
    second = asyncio.create_task(call(worker, [[1, 6, 2]]))
    await asyncio.sleep(0.01)
    assert worker.depth == 2
    batches_before = len(backend.batch_sizes)
    with pytest.raises(Overloaded) as info:
        with worker.admit():
            pass
    assert info.value.status == 429 and info.value.retry_after >= 1
    assert len(backend.batch_sizes) == batches_before
    await asyncio.gather(first, second)
    assert worker.depth == 0
    with worker.admit():  # slots are released after the answers
        pass
    await worker.close()


async def test_each_request_leaving_the_queue_is_told_once_and_a_refused_one_never():
    """The protocol's read holds (api/fast_refusal.py) hear of every place freed, when it is freed."""
    backend = FakeBackend(delay=0.05)
    freed: list[int] = []
    worker = make_worker(backend, max_queue=2, on_room=lambda: freed.append(worker.room))
    first = asyncio.create_task(call(worker, [[1, 5, 2]]))
    second = asyncio.create_task(call(worker, [[1, 6, 2], [1, 7, 2]]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        with worker.admit():
            pass
    assert freed == []  # nothing left yet, and the refused request never held a place
    await asyncio.gather(first, second)
    assert sorted(freed) == [1, 2]  # one call per request, each after its place is free
    await worker.close()


async def test_backend_fault_fails_only_that_batch_and_worker_goes_on():
    backend = FakeBackend()
    backend.fail_when = lambda batch: bool((batch.input_ids == 666).any())
    worker = make_worker(backend, max_batch_size=1)
    good, bad = [1, 5, 2], [1, 666, 2]
    results = await asyncio.wait_for(
        asyncio.gather(call(worker, [good]), call(worker, [bad]), return_exceptions=True), timeout=5
    )
    np.testing.assert_array_equal(results[0][0], backend.vector_for(good))
    assert isinstance(results[1], BackendFailure)
    assert results[1].status == 500 and "injected backend fault" in results[1].message
    # the worker survived: the next request is served
    again = await asyncio.wait_for(call(worker, [good]), timeout=5)
    np.testing.assert_array_equal(again[0], backend.vector_for(good))
    await worker.close()


async def test_every_caller_of_a_failing_batch_gets_an_error_not_a_hang():
    backend = FakeBackend(delay=0.01)
    backend.fail_when = lambda batch: True
    worker = make_worker(backend)
    results = await asyncio.wait_for(
        asyncio.gather(*(call(worker, [[1, i + 3, 2]]) for i in range(20)), return_exceptions=True), timeout=5
    )
    assert all(isinstance(r, BackendFailure) for r in results)
    assert worker.depth == 0
    await worker.close()


async def test_backend_returning_wrong_row_count_is_a_failure_not_a_hang():
    backend = FakeBackend()
    backend.pool = lambda batch, hidden: np.zeros((0, 8), dtype=np.float32)
    worker = make_worker(backend)
    with pytest.raises(BackendFailure):
        await asyncio.wait_for(call(worker, [[1, 5, 2]]), timeout=5)
    await worker.close()


async def test_cancelled_caller_does_not_break_others():
    backend = FakeBackend(delay=0.05)
    worker = make_worker(backend, max_batch_size=1)
    slow = asyncio.create_task(call(worker, [[1, 5, 2]]))
    cancelled = asyncio.create_task(call(worker, [[1, 6, 2]]))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    result = await asyncio.wait_for(slow, timeout=5)
    assert result.shape == (1, 8)
    after = await asyncio.wait_for(call(worker, [[1, 7, 2]]), timeout=5)
    np.testing.assert_array_equal(after[0], backend.vector_for([1, 7, 2]))
    assert worker.depth == 0
    await worker.close()


async def test_close_finishes_in_flight_and_queued_requests_and_refuses_new_ones():
    backend = FakeBackend(delay=0.1)
    worker = make_worker(backend, max_batch_size=1)
    seqs = [[1, 5 + i, 2] for i in range(3)]
    pending = [asyncio.create_task(call(worker, [s])) for s in seqs]
    await asyncio.sleep(0.01)  # the first is in flight, two wait behind it
    closing = asyncio.create_task(worker.close(timeout=5))
    await asyncio.sleep(0)
    with pytest.raises(NotReady, match="'m' is shutting down") as refused:
        with worker.admit():
            pass
    assert refused.value.status == 503
    await asyncio.wait_for(closing, timeout=5)
    assert all(task.done() for task in pending)  # close returned only once every admitted caller had its answer
    for seq, task in zip(seqs, pending, strict=True):
        np.testing.assert_array_equal(task.result(), [backend.vector_for(seq)])
    assert backend.batch_sizes == [1, 1, 1] and worker.depth == 0


async def test_two_inference_workers_run_two_batches_at_once():
    backend = Tracking(delay=0.05)
    worker = make_worker(backend, max_batch_size=1, threads=2)
    seqs = [[1, 10 + i, 2] for i in range(8)]
    results = await asyncio.gather(*(call(worker, [s]) for s in seqs))
    assert backend.peak == 2  # never more than the configured workers, and both used
    for seq, result in zip(seqs, results, strict=True):
        np.testing.assert_array_equal(result[0], backend.vector_for(seq))
    await worker.close()


async def test_one_worker_never_overlaps_batches():
    backend = Tracking(delay=0.02)
    worker = make_worker(backend, max_batch_size=1)
    await asyncio.gather(*(call(worker, [[1, 10 + i, 2]]) for i in range(6)))
    assert backend.peak == 1
    await worker.close()


async def test_unloading_mid_batch_fails_waiting_requests_instead_of_hanging():
    # close() past its timeout cancels the batch in flight and fails everything queued: no caller
    # gets vectors, every one gets a 503 "was unloaded" at once, not when the stuck batch ends.
    backend = Tracking(delay=0.5)
    worker = make_worker(backend, max_batch_size=1)
    calls = [asyncio.create_task(call(worker, [[1, 10 + i, 2]])) for i in range(3)]
    await asyncio.sleep(0.05)
    assert backend.active == 1  # one batch in flight, two requests queued behind it
    await worker.close(timeout=0.01)
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=5)
    assert backend.active == 1  # the callers got their answer while the batch still ran
    assert [type(r) for r in results] == [NotReady] * 3, results
    assert [(r.status, r.code, r.message) for r in results] == [(503, "not_ready", "model 'm' was unloaded")] * 3
    assert backend.batch_sizes == [1]  # the queued requests never reached the model
    assert worker.depth == 0


async def test_a_free_worker_waits_briefly_for_requests_still_tokenizing():
    backend = FakeBackend()
    worker = make_worker(backend)

    async def caller(ids, tokenize_for):
        with worker.admit() as admission:
            await asyncio.sleep(tokenize_for)  # stands in for tokenizing in a thread
            return await worker.embed([ids], admission)

    results = await asyncio.gather(caller([1, 5, 2], 0), caller([1, 6, 2], 0.0005))
    assert backend.batch_sizes == [2]  # the second joined the first's batch
    np.testing.assert_array_equal(results[1][0], backend.vector_for([1, 6, 2]))
    await worker.close()


async def test_a_request_that_never_submits_does_not_hold_the_worker():
    backend = FakeBackend()
    worker = make_worker(backend)
    with worker.admit():
        pass  # e.g. its input failed validation before reaching the pool
    assert worker._arriving == 0  # noqa: SLF001
    result = await asyncio.wait_for(call(worker, [[1, 5, 2]]), timeout=1)
    assert backend.batch_sizes == [1] and result.shape == (1, 8)
    await worker.close()


@pytest.mark.parametrize(("overhead", "batches"), [(1_000, 1), (0, 2)])
async def test_the_planner_weighs_padding_against_the_backend_s_own_batch_cost(overhead, batches):
    # Four short inputs and four long ones in one request: one batch pads the short ones to 40
    # tokens; two batches avoid that. Which is cheaper depends on what a batch costs the backend.
    backend = FakeBackend()
    backend.batch_overhead_tokens = overhead
    worker = make_worker(backend, max_batch_size=16)
    seqs = [[1, 10, 2]] * 4 + [[1, *range(10, 48), 2]] * 4
    await call(worker, seqs)
    assert len(backend.batch_sizes) == batches, backend.batch_sizes
    await worker.close()

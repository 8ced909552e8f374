"""Concurrency over HTTP: own vectors under batching, 429 when the queue is full, backend faults.

Requests are sent from threads through one TestClient: they all run on the app's one event
loop, so they are really in flight together, as with a real server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedserve.backends.fake import CLS, SEP, FakeBackend
from tests.support.api import assert_error_envelope as assert_openai_error
from tests.support.api import expected_for_ids

URL = "/v1/embeddings"
POISON = 666  # a token id the fault-injection tests fail on


def expected(backend: FakeBackend, ids: list[int]) -> np.ndarray:
    return expected_for_ids(backend, [CLS, *ids, SEP])


def concurrently(client, bodies: list[dict], timeout: float = 10.0) -> list[tuple]:
    """POST every body at once from its own thread: [(response, seconds)] in body order."""
    barrier = threading.Barrier(len(bodies))

    def call(body):
        barrier.wait(timeout)
        started = time.perf_counter()
        response = client.post(URL, json=body)
        return response, time.perf_counter() - started

    pool = ThreadPoolExecutor(len(bodies))
    try:
        futures = [pool.submit(call, body) for body in bodies]
        return [f.result(timeout=timeout) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def post_with_timeout(client, body: dict, timeout: float = 5.0):
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(client.post, URL, json=body).result(timeout=timeout)
    finally:
        pool.shutdown(wait=False)


# ---- each caller gets its own vectors ---------------------------------------------------


def test_concurrent_callers_each_get_their_own_vectors(make_client):
    backend = FakeBackend(delay=0.05)
    client = make_client(backend=backend)
    bodies = [{"input": [[10 * i + j + 3] * (j + 1) for j in range(i % 3 + 1)]} for i in range(8)]
    results = concurrently(client, bodies)
    assert max(backend.batch_sizes) > 1, "requests were never batched together; the test proves nothing"
    for body, (r, _) in zip(bodies, results, strict=True):
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [item["index"] for item in data] == list(range(len(body["input"])))
        assert r.json()["usage"]["total_tokens"] == sum(len(ids) + 2 for ids in body["input"])
        for ids, item in zip(body["input"], data, strict=True):
            np.testing.assert_allclose(item["embedding"], expected(backend, ids), rtol=1e-5, atol=1e-6)


# ---- backpressure -----------------------------------------------------------------------


def test_full_queue_answers_429_at_once(make_client):
    # A batch long enough that "answered before the batch ended" can't be confused with scheduling
    # delay: on CI's 2 cores a 429 once took 0.25 s to come back through TestClient's threads.
    delay = 1.0
    client = make_client(backend=FakeBackend(delay=delay), max_queue=2)
    bodies = [{"input": [i + 3]} for i in range(6)]
    results = concurrently(client, bodies)

    statuses = [r.status_code for r, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1, statuses
    assert statuses.count(200) >= 2, statuses  # the first two admitted always finish

    first_batch_done = min(seconds for r, seconds in results if r.status_code == 200)
    for r, seconds in results:
        if r.status_code == 429:
            assert seconds < first_batch_done, "a 429 came back after the batch it was refused for ended"
            error = assert_openai_error(r, 429, type_="rate_limit_error", code="queue_full")
            assert "max 2" in error["message"] and "retry" in error["message"]
            assert int(r.headers["retry-after"]) >= 1
            assert 500 <= int(r.headers["retry-after-ms"]) <= 1500  # spread, so refused clients don't return as one wave
            assert r.headers.get("x-request-id")
            assert seconds < delay / 2, f"429 took {seconds:.3f}s: it waited for the batch"
        else:
            assert "retry-after" not in r.headers
            assert seconds >= delay * 0.9
            assert r.json()["data"][0]["object"] == "embedding"


def test_server_serves_again_once_the_queue_drains(make_client):
    client = make_client(backend=FakeBackend(delay=0.2), max_queue=1)
    statuses = [r.status_code for r, _ in concurrently(client, [{"input": "a"}, {"input": "b"}, {"input": "c"}])]
    assert 429 in statuses and 200 in statuses
    r = post_with_timeout(client, {"input": "after"})
    assert r.status_code == 200, r.text
    samples = client.get("/metrics").text
    assert 'embedserve_requests_total{method="POST",route="/v1/embeddings",status="429"}' in samples
    assert 'embedserve_queue_depth{model="org/fake-model"} 0.0' in samples


# ---- backend faults ---------------------------------------------------------------------


def test_backend_fault_is_500_and_the_worker_survives(client, fake_backend):
    fake_backend.fail_when = lambda batch: True
    started = time.perf_counter()
    r = post_with_timeout(client, {"input": "doomed"})
    assert time.perf_counter() - started < 5
    error = assert_openai_error(r, 500, type_="server_error", code="inference_failed")
    assert "inference failed" in error["message"]
    assert r.headers.get("x-request-id")

    # Still failing while the fault is on, without hanging.
    r = post_with_timeout(client, {"input": ["two", "inputs"]})
    assert_openai_error(r, 500, type_="server_error", code="inference_failed")

    fake_backend.fail_when = None
    r = post_with_timeout(client, {"input": "recovered"})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 8


def test_fault_fails_only_the_batch_that_failed(make_client):
    """One input per batch: only the request holding the poisoned input fails."""
    backend = FakeBackend(delay=0.02)
    client = make_client(backend=backend, max_batch_size=1)
    backend.fail_when = lambda batch: bool((batch.input_ids == POISON).any())
    bodies = [{"input": [[5, 6]]}, {"input": [[11], [POISON]]}, {"input": [[7]]}, {"input": [[8], [9]]}]
    results = concurrently(client, bodies)
    for body, (r, _) in zip(bodies, results, strict=True):
        if [POISON] in body["input"]:
            assert_openai_error(r, 500, type_="server_error", code="inference_failed")
        else:
            assert r.status_code == 200, r.text
            for ids, item in zip(body["input"], r.json()["data"], strict=True):
                np.testing.assert_allclose(item["embedding"], expected(backend, ids), rtol=1e-5, atol=1e-6)
    assert set(backend.batch_sizes) == {1}


def test_failures_are_counted_in_metrics(client, fake_backend):
    fake_backend.fail_when = lambda batch: True
    assert post_with_timeout(client, {"input": "x"}).status_code == 500
    fake_backend.fail_when = None
    text = client.get("/metrics").text
    assert 'embedserve_requests_total{method="POST",route="/v1/embeddings",status="500"} 1.0' in text
    assert 'embedserve_queue_depth{model="org/fake-model"} 0.0' in text

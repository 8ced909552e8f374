"""A request's life as a client can end it or the server can bound it: disconnects, cut-short and slow
bodies, --request-timeout, --max-request-tokens, and a model whose batching loop dies."""

from __future__ import annotations

import asyncio

import pytest

from embedserve.api.app import create_app
from embedserve.backends.fake import CLS, SEP, FakeBackend
from embedserve.engine import worker as worker_module
from embedserve.settings import Settings
from tests.conftest import FakeResolver
from tests.support.asgi import request, running

MODEL = "org/fake-model"
URL = "/v1/embeddings"


def make_app(backend: FakeBackend, **overrides):
    settings = Settings(**{"models": (MODEL,), "model_workers": 1, "max_batch_size": 1} | overrides)
    return create_app(settings, backend_factory=lambda path: backend, resolver=FakeResolver())


def ran(backend: FakeBackend, ids: list[int]) -> bool:
    """Whether these token ids (as sent, without specials) were ever computed."""
    return [CLS, *ids, SEP] in [seq for batch in backend.batches for seq in batch]


def metric(text: str, status: int) -> float:
    line = f'embedserve_requests_total{{method="POST",route="/v1/embeddings",status="{status}"}}'
    return next((float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)), 0.0)


async def test_a_client_that_disconnects_while_queued_is_dropped_before_its_inputs_run():
    backend = FakeBackend(delay=0.3)
    app = make_app(backend)
    async with running(app):
        busy = asyncio.create_task(request(app, "POST", URL, json={"input": [[11]]}))
        await asyncio.sleep(0.05)  # [11] is on the only inference thread
        left = await request(app, "POST", URL, json={"input": [[12], [13]]}, disconnect_after=0.05)
        assert left.status is None  # nobody to answer
        assert (await busy).status == 200
        after = await request(app, "POST", URL, json={"input": [[14]]})
        assert after.status == 200
        assert ran(backend, [11]) and ran(backend, [14])
        assert not ran(backend, [12]) and not ran(backend, [13])  # dropped from the queue, never computed
        metrics = (await request(app, "GET", "/metrics")).body.decode()
        assert metric(metrics, 499) == 1.0  # counted as the client closing the request
        assert app.state.service.pool.get(MODEL).worker.depth == 0


async def test_a_body_cut_short_by_a_disconnect_is_never_run():
    backend = FakeBackend()
    app = make_app(backend)
    async with running(app):
        whole = b'{"input": [[21], [22]]}'
        cut = await request(app, "POST", URL, chunks=[whole[:10], whole[10:]], chunk_delay=0.3, disconnect_after=0.1)
        assert cut.status is None
        await asyncio.sleep(0.1)
        assert backend.batches == []  # (the first chunk alone is not even valid JSON: nothing ran)
        # a cut that happens to leave valid JSON is not run either
        cut = await request(app, "POST", URL, chunks=[b'{"input": [[23]]}', b" "], chunk_delay=0.3, disconnect_after=0.1)
        assert cut.status is None
        await asyncio.sleep(0.05)
        assert not ran(backend, [23])


async def test_a_body_slower_than_body_timeout_is_408_and_never_run():
    backend = FakeBackend()
    app = make_app(backend, body_timeout=0.2)
    async with running(app):
        slow = await request(app, "POST", URL, chunks=[b'{"input": ', b"[[31]]}"], chunk_delay=0.5)
        assert slow.status == 408 and slow.headers["connection"] == "close"
        assert slow.json()["error"]["code"] == "body_timeout"
        assert "0.2 s" in slow.json()["error"]["message"]
        assert not ran(backend, [31])
        fast = await request(app, "POST", URL, chunks=[b'{"input": ', b"[[32]]}"], chunk_delay=0.05)
        assert fast.status == 200


async def test_request_timeout_answers_503_and_the_work_leaves_the_queue():
    backend = FakeBackend(delay=0.4)
    app = make_app(backend, request_timeout=0.2)
    async with running(app):
        first = asyncio.create_task(request(app, "POST", URL, json={"input": [[41]]}))
        await asyncio.sleep(0.02)
        late = await request(app, "POST", URL, json={"input": [[42]]})
        assert late.status == 503 and int(late.headers["retry-after"]) >= 1
        error = late.json()["error"]
        assert error["code"] == "request_timeout" and "within 0.2 s" in error["message"]
        assert (await first).status == 503  # 0.4 s of inference is past 0.2 s too
        await asyncio.sleep(0.5)
        assert not ran(backend, [42])  # it timed out while queued: never computed
        assert app.state.service.pool.get(MODEL).worker.depth == 0


async def test_a_request_with_more_tokens_than_max_request_tokens_is_413():
    backend = FakeBackend()
    app = make_app(backend, max_request_tokens=10)
    async with running(app):
        r = await request(app, "POST", URL, json={"input": [[1, 2, 3], [4, 5, 6]]})  # 2 x (3 + CLS + SEP) = 10
        assert r.status == 200
        r = await request(app, "POST", URL, json={"input": [[1, 2, 3], [4, 5, 6, 7]]})  # 11
        assert r.status == 413
        error = r.json()["error"]
        assert error["code"] == "too_many_tokens" and "11 tokens" in error["message"] and "at most 10" in error["message"]
        assert not ran(backend, [4, 5, 6, 7])


async def test_a_dying_batching_loop_is_503_at_once_then_health_error_then_restarted(monkeypatch):
    monkeypatch.setattr(worker_module, "RESTART_BACKOFF", (0.5, 1.0))
    backend = FakeBackend()
    app = make_app(backend)
    async with running(app):
        backend.kill_loop = True
        r = await request(app, "POST", URL, json={"input": [[51]]})
        assert r.status == 503 and r.json()["error"]["code"] == "not_ready"
        assert "engine fault" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
        health = (await request(app, "GET", "/health")).json()
        assert health["status"] == "error" and health["model_status"] == {MODEL: "error"}
        assert (await request(app, "GET", "/ready")).status == 503
        r = await request(app, "POST", URL, json={"input": [[52]]})
        assert r.status == 503  # refused at once while it restarts, not queued into a dead loop
        for _ in range(200):
            if (await request(app, "GET", "/ready")).status == 200:
                break
            await asyncio.sleep(0.01)
        health = (await request(app, "GET", "/health")).json()
        assert health["status"] == "healthy" and health["model_status"] == {MODEL: "ready"}
        assert (await request(app, "POST", URL, json={"input": [[53]]})).status == 200
        assert not ran(backend, [51]) and not ran(backend, [52]) and ran(backend, [53])


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
async def test_every_429_is_summed_in_one_log_line_not_one_each(path, caplog):
    backend = FakeBackend(delay=0.3)
    app = make_app(backend, max_queue=1)
    body = {"input": [[61]]} if path == URL else {"texts": ["a"]}
    async with running(app):
        caplog.clear()
        busy = asyncio.create_task(request(app, "POST", path, json=body))
        await asyncio.sleep(0.02)
        statuses = [(await request(app, "POST", path, json=body)).status for _ in range(50)]
        assert statuses == [429] * 50
        assert (await busy).status == 200
        rejected_lines = [r for r in caplog.records if "429" in r.getMessage()]
        assert len(rejected_lines) <= 1, [r.getMessage() for r in rejected_lines]


async def test_while_every_queue_is_full_a_request_is_refused_before_its_body_is_read():
    backend = FakeBackend(delay=0.5)
    app = make_app(backend, max_queue=1)
    async with running(app):
        busy = asyncio.create_task(request(app, "POST", URL, json={"input": [[71]]}))
        await asyncio.sleep(0.05)
        slow_body = [b'{"input": ', b"[[72]]}"]
        refused = await request(app, "POST", URL, chunks=slow_body, chunk_delay=0.4)
        assert refused.status == 429 and refused.seconds < 0.3  # answered without waiting for the body
        assert refused.json()["error"]["code"] == "queue_full" and int(refused.headers["retry-after"]) >= 1
        assert (await request(app, "GET", "/model/info")).status == 200  # routes that queue nothing still answer
        assert (await busy).status == 200
        assert (await request(app, "POST", URL, chunks=slow_body, chunk_delay=0.05)).status == 200
        runs = [seq for batch in backend.batches for seq in batch].count([CLS, 72, SEP])
        assert runs == 1  # only the admitted one ran; the refused one never reached the engine

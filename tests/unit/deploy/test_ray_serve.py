"""The Ray Serve replica's own layer (deploy/ray_serve.py), on the fake backend, without Ray: a request
whose body Ray's proxy lost in a retry is a prompt 503 that never ran, and the options Ray gets."""

from __future__ import annotations

import asyncio

import orjson

from embedserve.api.app import create_app
from embedserve.backends.fake import CLS, SEP, FakeBackend
from embedserve.deploy.ray_serve import BodyHandoff, deployment_options, max_ongoing_requests
from embedserve.settings import Settings
from tests.conftest import FakeResolver
from tests.support.asgi import Exchange, running

MODEL = "org/fake-model"
URL = "/v1/embeddings"


def make_app(backend: FakeBackend):
    settings = Settings(models=(MODEL,), model_workers=1, max_batch_size=4)
    return create_app(settings, backend_factory=lambda path: backend, resolver=FakeResolver())


def ran(backend: FakeBackend, ids: list[int]) -> bool:
    return [CLS, *ids, SEP] in [seq for batch in backend.batches for seq in batch]


async def through_the_proxy(app, messages: list[dict] | None, content_length: int | None, handoff_s: float = 0.3):
    """One POST as a Ray replica sees it: its body comes as `messages` from the proxy, or (None) never,
    as when the proxy already handed it to a replica that died. The client stays until answered."""
    headers = [(b"content-type", b"application/json")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": URL, "raw_path": URL.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }
    pending = list(messages or [])
    answered = asyncio.Event()
    exchange = Exchange()

    async def receive():
        if pending:
            return pending.pop(0)
        await answered.wait()  # nothing more from the proxy until the client leaves after its answer
        return {"type": "http.disconnect"}

    async def send(message):
        if exchange.record(message):
            answered.set()

    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(BodyHandoff(app, handoff_s=handoff_s)(scope, receive, send), 10)
    exchange.seconds = asyncio.get_running_loop().time() - started
    return exchange


async def test_a_body_that_never_comes_is_a_prompt_503_and_never_runs():
    backend = FakeBackend()
    app = make_app(backend)
    async with running(app):
        lost = await through_the_proxy(app, None, content_length=20)
        assert lost.status == 503 and lost.headers["retry-after"] == "1"
        error = lost.json()["error"]
        assert error["code"] == "request_body_lost" and "send it again" in error["message"]
        assert 0.3 <= lost.seconds < 2.0
        body = orjson.dumps({"input": [[31]]})
        ok = await through_the_proxy(app, [{"type": "http.request", "body": body}], content_length=len(body))
        assert ok.status == 200 and len(ok.json()["data"]) == 1
        assert ran(backend, [31]) and len(backend.batches) == 1  # the lost one never reached the engine


async def test_a_body_cut_short_of_its_content_length_is_503_and_never_runs():
    backend = FakeBackend()
    app = make_app(backend)
    async with running(app):
        whole = orjson.dumps({"input": [[41], [42]]})
        tail = [{"type": "http.request", "body": whole[12:], "more_body": False}]  # the head went to a dead replica
        cut = await through_the_proxy(app, tail, content_length=len(whole))
        assert cut.status == 503 and cut.json()["error"]["code"] == "request_body_lost"
        assert f"after {len(whole) - 12} of its {len(whole)} bytes" in cut.json()["error"]["message"]
        assert backend.batches == []


async def test_a_body_in_several_messages_and_one_without_content_length_pass_unchanged():
    backend = FakeBackend()
    app = make_app(backend)
    async with running(app):
        whole = orjson.dumps({"input": [[51], [52]]})
        parts = [
            {"type": "http.request", "body": whole[:7], "more_body": True},
            {"type": "http.request", "body": whole[7:], "more_body": False},
        ]
        ok = await through_the_proxy(app, [dict(p) for p in parts], content_length=len(whole))
        assert ok.status == 200 and len(ok.json()["data"]) == 2
        chunked = await through_the_proxy(app, [dict(p) for p in parts], content_length=None)
        assert chunked.status == 200 and ok.json()["data"] == chunked.json()["data"]


def test_ray_options_come_from_our_settings():
    settings = Settings(models=(MODEL,), model_workers=2, max_batch_size=32, max_queue=512, replicas=2)
    assert max_ongoing_requests(settings) == 96  # (workers + 1) x batch: a batch forming while two compute
    options = deployment_options(settings)
    assert options["num_replicas"] == 2 and options["max_queued_requests"] == 512
    scaling = deployment_options(settings.model_copy(update={"ray_max_replicas": 4}))["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (2, 4)

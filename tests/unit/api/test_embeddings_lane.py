"""The short path for POST /v1/embeddings answers exactly what FastAPI's route answers.

Every body below goes to two apps on the same deterministic backend, one with the lane and
one without; status, JSON body and the headers a client reads must be identical. A second
check makes sure the lane is really taken for well-formed requests (so the comparison is not
between two FastAPI answers).
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from embedserve.api import embeddings_lane
from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.settings import Settings
from tests.conftest import FakeResolver, wait_ready
from tests.unit.api.test_openai_fuzz_bodies import WEIRD_BODIES

URL = "/v1/embeddings"
JSON = "application/json"

WELL_FORMED = [
    {"input": "hello world"},
    {"input": "hello world", "model": "org/fake-model"},
    {"input": "hello world", "model": "fake-model"},
    {"input": ["a", "b c", "hello world again"]},
    {"input": [1, 2, 3]},
    {"input": [[1, 2], [3, 4, 5]]},
    {"input": "hello", "encoding_format": "base64"},
    {"input": ["hello", "world"], "dimensions": 4},
    {"input": "hello", "dimensions": 0},
    {"input": "hello", "input_type": "query"},
    {"input": "hello", "user": "someone", "unknown_extra": {"x": 1}},
]
# Parse and validate, then fail in the service: the lane maps these with the shared handler.
REFUSED_BY_THE_SERVICE = [
    {"input": []},
    {"input": ""},
    {"input": ["a", ""]},
    {"input": "hello", "model": "missing-model"},
    {"input": "hello", "dimensions": -1},
    {"input": "hello", "dimensions": 10_000},
    {"input": [[1, 99_999]]},
    {"input": ["x"] * 5000},
]
# Rejected before the service: the lane hands these to FastAPI.
REJECTED_BY_VALIDATION = [
    {},
    {"input": None},
    {"input": 3},
    {"input": [1.5]},
    {"input": "a", "encoding_format": "hex"},
    {"input": "a", "dimensions": "4"},
    {"input": ["a"], "input_type": "sideways"},
    {"input": [1, 2], "input_type": "query"},
]
BODIES = [json.dumps(b).encode() for b in WELL_FORMED + REFUSED_BY_THE_SERVICE + REJECTED_BY_VALIDATION]
BODIES += [b'{"input": NaN}', b'{"input": [99999999999999999999999]}', b'{"input": "\\ud800"}', *WEIRD_BODIES]
CONTENT_TYPES = [JSON, "application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.api+json", None,
                 "text/plain"]


def make_client(lane: bool) -> TestClient:
    settings = Settings(models=("org/fake-model",), max_inputs=2048)
    backend = FakeBackend()
    app = create_app(settings, backend_factory=lambda path: backend, resolver=FakeResolver(), embeddings_lane=lane)
    client = TestClient(app)
    client.__enter__()
    wait_ready(client)
    return client


@pytest.fixture(scope="module")
def clients():
    pair = make_client(lane=True), make_client(lane=False)
    yield pair
    for client in pair:
        client.__exit__(None, None, None)


def answer(client: TestClient, body: bytes, content_type: str | None) -> tuple:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(URL, content=body, headers=headers)
    seen = {k: r.headers.get(k) for k in ("content-type", "retry-after", "access-control-allow-origin")}
    assert r.headers.get("x-request-id")
    return r.status_code, r.content, seen


@pytest.mark.parametrize("body", BODIES, ids=lambda raw: repr(raw[:48]))
def test_the_lane_answers_every_body_as_fastapi_does(clients, body):
    with_lane, without = clients
    assert answer(with_lane, body, JSON) == answer(without, body, JSON)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_the_lane_answers_every_content_type_as_fastapi_does(clients, content_type):
    with_lane, without = clients
    for body in (json.dumps(WELL_FORMED[0]).encode(), b"{"):
        assert answer(with_lane, body, content_type) == answer(without, body, content_type)


def test_cors_headers_are_the_same_through_the_lane(clients):
    with_lane, without = clients
    body, headers = json.dumps(WELL_FORMED[0]).encode(), {"content-type": JSON, "origin": "https://example.org"}
    a, b = (c.post(URL, content=body, headers=headers) for c in clients)
    assert a.status_code == b.status_code == 200
    assert a.headers["access-control-allow-origin"] == b.headers["access-control-allow-origin"]
    assert a.headers["access-control-expose-headers"] == b.headers["access-control-expose-headers"]


def test_well_formed_requests_take_the_lane_and_others_do_not(clients, monkeypatch):
    with_lane, _ = clients
    taken = []
    real = embeddings_lane.embeddings_payload

    async def counting(service, request):
        taken.append(request)
        return await real(service, request)

    monkeypatch.setattr(embeddings_lane, "embeddings_payload", counting)
    assert with_lane.post(URL, json={"input": "hello"}).status_code == 200
    assert with_lane.post(URL, json={"input": "hello", "model": "missing-model"}).status_code == 404
    assert len(taken) == 2
    assert with_lane.post(URL, json={"input": 3}).status_code == 422
    assert with_lane.post(URL, content=b'{"input": "a"}', headers={"content-type": "text/plain"}).status_code == 422
    assert len(taken) == 2


def test_requests_through_the_lane_are_counted_under_their_route(clients):
    with_lane, _ = clients
    with_lane.post(URL, json={"input": "hello"})
    metrics = with_lane.get("/metrics").text
    assert 'route="/v1/embeddings"' in metrics
    assert 'route="unmatched"' not in metrics

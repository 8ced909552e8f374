"""No request body, however odd, makes POST /v1/embeddings answer 5xx.

`hypothesis` is not installed in this project's environment, so this is a fixed sweep of
odd bodies rather than a generated one. Every answer must be a 200 in OpenAI's list shape
or a 4xx in OpenAI's error shape, and the server must keep serving afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.models.registry import ResolvedModel, aliases_for
from embedserve.settings import Settings

URL = "/v1/embeddings"
JSON = {"content-type": "application/json"}


def _json(value) -> bytes:
    return json.dumps(value).encode()


WEIRD_BODIES: list[bytes] = [
    # not JSON, or not quite
    b"",
    b" ",
    b"\x00",
    b"\xff\xfe\xfd",
    b"{",
    b"}",
    b"[",
    b'{"input": "a"',
    b'{"input": "a"}}',
    b"{'input': 'a'}",
    b'{"input": NaN}',
    b'{"input": Infinity}',
    b'{"input": -Infinity, "dimensions": NaN}',
    b'{"input": "a", "dimensions": 1e309}',
    b'{"input": "caf\xe9"}',  # latin-1, not UTF-8
    b'\xef\xbb\xbf{"input": "bom"}',
    b'{"input": [1' + b"0" * 5000 + b"]}",
    b"[" * 50_000,
    b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    # JSON, but not an object
    b"null",
    b"true",
    b"0",
    b'"input"',
    b"[]",
    b'[{"input": "a"}]',
    # objects with odd fields
    _json({}),
    _json({"input": {}}),
    _json({"input": {"0": "a"}}),
    _json({"input": [{}]}),
    _json({"input": [[]] * 3}),
    _json({"input": [[[]]]}),
    _json({"input": ["a", ["b"]]}),
    _json({"input": [2**63, 2**64]}),
    _json({"input": [[-(2**63)]]}),
    _json({"input": [0] * 5000}),
    _json({"input": [[1]] * 3000}),
    _json({"input": [""] * 5}),
    _json({"input": ["\x00\x01\x02"]}),
    _json({"input": ["\u200b\u200b"]}),
    _json({"input": ["🙂 " * 100]}),
    _json({"input": " \t\n "}),
    _json({"input": "a" * 100_000}),
    _json({"input": "a", "model": ""}),
    _json({"input": "a", "model": "../../etc/passwd"}),
    _json({"input": "a", "model": "\x00"}),
    _json({"input": "a", "model": "x" * 10_000}),
    _json({"input": "a", "dimensions": 2**70}),
    _json({"input": "a", "dimensions": -(2**70)}),
    _json({"input": "a", "dimensions": None}),
    _json({"input": "a", "encoding_format": ""}),
    _json({"input": "a", "encoding_format": ["base64"]}),
    _json({"input": "a", "user": None}),
    _json({"input": "a", "input ": "b", "INPUT": 1}),
    _json({"input": "a", "__class__": "x", "model_config": {}}),
]


class OneModelResolver:
    def resolve(self, name: str, **policy) -> ResolvedModel:
        return ResolvedModel(name, Path("/fake") / name, "fake", aliases_for(name))


@pytest.fixture
def lenient_client():
    """Like conftest's `client`, but an unhandled error comes back as the 500 a real client sees."""
    backend = FakeBackend()
    app = create_app(
        Settings(models=("org/fake-model",)), backend_factory=lambda path: backend, resolver=OneModelResolver()
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "app did not become ready"
            time.sleep(0.01)
        yield client


def assert_client_visible_answer(r) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    body = r.json()
    if r.status_code == 200:
        assert body["object"] == "list"
        assert body["data"] and all(item["object"] == "embedding" for item in body["data"])
    else:
        assert 400 <= r.status_code < 500
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert body["error"]["type"] == "invalid_request_error"


def test_sweep_has_enough_bodies():
    assert len(WEIRD_BODIES) >= 50
    assert len(set(WEIRD_BODIES)) == len(WEIRD_BODIES)


@pytest.mark.parametrize("raw", WEIRD_BODIES, ids=lambda raw: repr(raw[:40]))
def test_weird_body_never_gives_5xx(lenient_client, raw):
    r = lenient_client.post(URL, content=raw, headers=JSON)
    assert_client_visible_answer(r)
    assert r.headers.get("x-request-id")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream", "multipart/form-data"])
def test_weird_bodies_with_other_content_types(lenient_client, content_type):
    headers = {} if content_type is None else {"content-type": content_type}
    for raw in WEIRD_BODIES[::5]:
        r = lenient_client.post(URL, content=raw, headers=headers)
        assert_client_visible_answer(r)


def test_server_still_serves_after_the_sweep(lenient_client):
    for raw in WEIRD_BODIES:
        lenient_client.post(URL, content=raw, headers=JSON)
    r = lenient_client.post(URL, json={"input": ["still", "alive"]})
    assert r.status_code == 200, r.text
    assert [item["index"] for item in r.json()["data"]] == [0, 1]


@pytest.mark.parametrize(
    "raw", [b'{"input": "\\ud800"}', b'{"input": ["ok", "bad \\udfff end"]}'], ids=["string", "second-item"]
)
def test_lone_surrogate_in_input_is_a_client_error(lenient_client, raw):
    r = lenient_client.post(URL, content=raw, headers=JSON)
    assert_client_visible_answer(r)
    assert r.status_code == 422

"""Model names from requests, the way the internet will send them, against the real server.

Each probe below answered 500, reset the connection or told a path from another before this
suite; now: a name that resolves to nothing is 404, an unloaded or loading model 503 with
Retry-After, and no answer holds a path of this server or a stack trace.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest

from .conftest import FAST_START, start_server, stop_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("abuse"), *FAST_START, "--allow-models", "sentence-transformers/*")
    yield srv
    stop_server(srv)


def embed(server, model, route="/v1/embeddings"):
    """The name as each route takes it; JSON written with \\u escapes, so lone surrogates travel as sent."""
    json_headers = {"content-type": "application/json"}
    if route == "/v1/embeddings":
        body = json.dumps({"model": model, "input": "hi"})
        return httpx.post(server.url + route, content=body, headers=json_headers, timeout=30)
    if route == "/embeddings":
        body = json.dumps({"model_name": model, "texts": ["hi"]})
        return httpx.post(server.url + route, content=body, headers=json_headers, timeout=30)
    raw = model.encode("utf-8", "surrogatepass")  # a query string is bytes: send the surrogate's bytes as they are
    return httpx.post(server.url + route + "?model_name=" + quote_from_bytes(raw, safe=""), timeout=30)


def assert_no_server_path(text: str) -> None:
    for leak in (str(ROOT), "/root", "/tmp/", "site-packages", "Traceback", ".cache", os.getcwd()):
        assert leak not in text, (leak, text)


NAMES = [
    "/etc", "/etc/passwd", "../../etc", "..", "a/b/c/d", "~nosuchuser", "~root", "x" * 300, "src", "tests",
    "README.md", "./src", "\ud800", "a\x00b", "C:\\Windows", "org/" + "n" * 200, "sentence-transformers/../x",
]


@pytest.mark.parametrize("route", ["/v1/embeddings", "/embeddings", "/model/load"])
@pytest.mark.parametrize("name", NAMES, ids=lambda n: repr(n)[:30])
def test_a_name_that_is_no_model_here_is_404_never_500_or_a_reset(server, route, name):
    r = embed(server, name, route)
    error = r.json()["error"]
    if name == "\ud800" and r.status_code == 422:  # a route whose model refuses text that isn't Unicode
        assert error["code"] == "invalid_request" and error["param"] == "model_name"
    else:
        assert r.status_code == 404, (r.status_code, r.text[:300])
        assert error["code"] == "model_not_found" and error["param"] in ("model", "model_name")
    assert_no_server_path(r.text)
    if not name.replace("/", "").replace(".", "").isalnum():  # path-like names are never quoted back
        assert name not in error["message"]


def test_an_existing_and_a_missing_directory_answer_the_same(server, tmp_path):
    (tmp_path / "real-dir").mkdir()
    paths = {embed(server, str(tmp_path / d)).text for d in ("real-dir", "no-such-dir")}
    paths |= {embed(server, d).text for d in ("/usr", "/no-such-dir", "./src", "./no-such-src")}
    assert len(paths) == 1, paths  # one answer: no filesystem oracle
    # a bare name is looked up by name only, never in the server's working directory (which has src/)
    names = {embed(server, d).text.replace(d, "NAME") for d in ("src", "no-such-src")}
    assert len(names) == 1, names


def test_a_hub_id_outside_allow_models_loads_nothing(server):
    r = embed(server, "evil/model")
    assert r.status_code == 404
    assert "does not load it from the Hugging Face Hub" in r.json()["error"]["message"]
    models = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_a_surrogate_in_a_map_key_is_422_and_the_log_stays_one_line_per_request(server):
    lines_before = len(server.log().splitlines())
    body = '{"\\ud800": "hello", "ok": "world"}'
    r = httpx.post(server.url + "/embedding", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    r = httpx.post(server.url + "/v1/embeddings", content='{"model": "\\ud800x", "input": "hi"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    new_lines = server.log().splitlines()[lines_before:]
    assert len(new_lines) <= 4, new_lines  # an access line each (plus a note), not a 165-line traceback
    for line in new_lines:
        json.loads(line)  # every log line is still one JSON object


def test_an_unloaded_default_model_answers_503_with_retry_after_until_loaded_again(tmp_path):
    srv = start_server(tmp_path, *FAST_START, "--no-load-on-demand")
    try:
        assert httpx.post(srv.url + "/model/unload", timeout=30).status_code == 200
        for r in (
            httpx.post(srv.url + "/v1/embeddings", json={"input": "hi"}),
            httpx.post(srv.url + "/v1/embeddings", json={"input": "hi", "model": "all-MiniLM-L6-v2"}),
            httpx.post(srv.url + "/embedding", json={"id": "hi"}),
            httpx.post(srv.url + "/vectorize", json={"text": "hi"}),
        ):
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "not_ready"
        assert httpx.get(srv.url + "/ready").status_code == 503
        assert httpx.get(srv.url + "/health").json()["status"] == "unavailable"
        # --no-load-on-demand: no embedding request loads it back (above); an admin's POST /model/load
        # may, since it is one of the operator's start-up models, and nothing else can be loaded
        assert httpx.post(srv.url + "/model/load", params={"model_name": "org/other-model"}).status_code == 404
        r = httpx.post(srv.url + "/model/load", params={"model_name": "all-MiniLM-L6-v2"}, timeout=120)
        assert r.status_code == 200 and r.json()["status"] == "loaded", r.text
        assert httpx.post(srv.url + "/vectorize", json={"text": "hi"}).status_code == 200
    finally:
        stop_server(srv)


def test_a_name_is_never_rebound_after_an_unload(server):
    """Unloading the default and loading any other model never makes `all-MiniLM-L6-v2` answer as it."""
    assert httpx.post(server.url + "/model/unload", timeout=30).status_code == 200
    try:
        r = embed(server, "all-MiniLM-L6-v2", "/model/load")  # the short name reloads the real model
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["model_name"] == "sentence-transformers/all-MiniLM-L6-v2" and info["source"] == "package"
    finally:
        httpx.post(server.url + "/model/load", params={"model_name": "sentence-transformers/all-MiniLM-L6-v2"},
                   timeout=120)

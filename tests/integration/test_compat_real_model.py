"""The drop-in routes on the real server and the real model, requests sent as each server's README shows.

Each response is checked in its documented shape and its vectors against
SentenceTransformer.encode. All but the last test share the session server; the last starts
one with `--models-list-style names` and also cycles a real unload/load on it.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from .conftest import MODEL, start_server, stop_server

pytestmark = pytest.mark.integration

DIM = 384
FIRST, SECOND = "This is the first sentence.", "Here is another sentence."


def cosines(a, b) -> np.ndarray:
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float32)), np.atleast_2d(np.asarray(b, dtype=np.float32))
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def assert_matches(got, texts: list[str], reference_model) -> None:
    got = np.asarray(got, dtype=np.float32)
    assert got.shape == (len(texts), DIM)
    assert cosines(got, reference_model.encode(texts)).min() >= 0.9999


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)


# ---- Flask "Sentence Transformer API" -----------------------------------------------------


def test_flask_map_of_ids(server, reference_model):
    r = post(server, "/embedding", json={"id1": FIRST, "id2": SECOND})
    assert r.status_code == 200, r.text
    body = r.json()
    assert list(body) == ["id1", "id2"]
    assert all(isinstance(v, str) and v.startswith("[") for v in body.values())
    assert_matches([json.loads(body["id1"]), json.loads(body["id2"])], [FIRST, SECOND], reference_model)


def test_flask_kserve_instances(server, reference_model):
    r = post(server, "/embedding", json={"instances": [FIRST, SECOND]})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"predictions"}
    assert_matches(r.json()["predictions"], [FIRST, SECOND], reference_model)


def test_flask_health(server):
    body = httpx.get(server.url + "/health").json()
    assert body["status"] == "healthy" and body["model"] == MODEL


# ---- Embeddings Generator -----------------------------------------------------------------


def test_generator_root(server):
    body = httpx.get(server.url + "/").json()
    assert body["default_model"] == MODEL and body["models"] == [MODEL]
    assert httpx.get(server.url + body["docs"]).status_code == 200


def test_generator_embeddings(server, reference_model):
    texts = ["A man is playing a guitar.", "The new movie is awesome!"]
    body = {"texts": texts, "model_name": MODEL, "normalize": True, "batch_size": 16}
    r = post(server, "/embeddings", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"embeddings", "model_name", "dimensions", "processing_time", "total_texts"}
    assert (out["model_name"], out["dimensions"], out["total_texts"]) == (MODEL, DIM, 2)
    assert isinstance(out["processing_time"], float) and out["processing_time"] > 0
    assert_matches(out["embeddings"], texts, reference_model)
    np.testing.assert_allclose(np.linalg.norm(out["embeddings"], axis=1), 1.0, atol=1e-5)


def test_generator_raw_vectors(server, reference_model):
    r = post(server, "/embeddings", json={"texts": [FIRST], "normalize": False})
    assert r.status_code == 200, r.text
    raw = np.asarray(r.json()["embeddings"], dtype=np.float32)
    assert not np.isclose(np.linalg.norm(raw), 1.0, atol=1e-2)  # MiniLM's Normalize module was skipped
    assert_matches(raw, [FIRST], reference_model)  # same direction


def test_generator_model_info(server):
    r = httpx.get(server.url + "/model/info")
    assert r.status_code == 200
    info = r.json()
    assert info["model_name"] == MODEL and info["dimensions"] == DIM
    assert (info["max_seq_length"], info["pooling"], info["normalize"]) == (256, "mean", True)
    assert info["family"] == "generic" and info["prefixes"]["source"] == "none"
    assert info["backend"] and info["device"].startswith(("cpu", "cuda"))
    assert [m["model_name"] for m in info["loaded_models"]] == [MODEL]


def test_generator_load_and_unload_errors(server):
    r = post(server, "/model/load", params={"model_name": "all-MiniLM-L6-v2"})
    assert r.status_code == 200 and r.json()["status"] == "already_loaded"
    r = post(server, "/model/load", params={"model_name": "no-such-org/no-such-model-xyz"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = post(server, "/model/unload", params={"model_name": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---- Embeddings API (OpenAI-like) ---------------------------------------------------------


def test_openai_input_type_is_accepted(server, reference_model):
    r = post(server, "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": [FIRST], "input_type": "query"})
    assert r.status_code == 200, r.text
    assert_matches([r.json()["data"][0]["embedding"]], [FIRST], reference_model)  # MiniLM has no prefixes


# ---- Sentence embeddings over HTTP --------------------------------------------------------


def test_encode_get_with_a_body(server, reference_model):
    r = httpx.request(
        "GET", server.url + "/v1/encode", json={"model": "all-MiniLM-L6-v2", "input": ["iPhone", "Samsung"]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"data", "model", "object"}
    assert (body["model"], body["object"]) == ("all-MiniLM-L6-v2", "list")
    for i, item in enumerate(body["data"]):
        assert item["dims"] == DIM and item["index"] == i and item["object"] == "embedding"
    assert_matches([item["embedding"] for item in body["data"]], ["iPhone", "Samsung"], reference_model)


# ---- Embedding Service (E5/BGE-M3) --------------------------------------------------------


def test_vectorize(server, reference_model):
    r = post(server, "/vectorize", json={"text": "Hello world", "is_query": True})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"vector"}
    assert_matches([r.json()["vector"]], ["Hello world"], reference_model)


def test_vectorize_batch(server, reference_model):
    items = [FIRST, SECOND, "hi"]
    r = post(server, "/vectorize-batch", json={"items": items, "is_query": False})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"vectors"}
    assert_matches(r.json()["vectors"], items, reference_model)


# ---- --models-list-style names, and a real unload / load -----------------------------------


def test_models_list_style_names_and_model_cycle(tmp_path, reference_model):
    srv = start_server(tmp_path, "--models-list-style", "names")
    try:
        models = httpx.get(srv.url + "/v1/models").json()
        assert models == {"data": ["all-MiniLM-L6-v2"], "object": "list"}  # by the name it was started with
        (name,) = models["data"]
        r = httpx.request("GET", srv.url + "/v1/encode", json={"model": name, "input": ["iPhone"]})
        assert r.status_code == 200, r.text
        assert_matches([r.json()["data"][0]["embedding"]], ["iPhone"], reference_model)

        r = httpx.post(srv.url + "/model/unload", timeout=60)
        assert r.status_code == 200 and r.json()["model_name"] == MODEL
        assert httpx.get(srv.url + "/v1/models").json() == {"data": [], "object": "list"}
        r = httpx.post(srv.url + "/model/load", params={"model_name": "all-MiniLM-L6-v2"}, timeout=120)
        assert r.status_code == 200 and r.json()["status"] == "loaded", r.text
        assert httpx.get(srv.url + "/v1/models").json() == {"data": ["all-MiniLM-L6-v2"], "object": "list"}
        r = httpx.post(srv.url + "/vectorize", json={"text": "Hello world"}, timeout=60)
        assert_matches([r.json()["vector"]], ["Hello world"], reference_model)
    finally:
        stop_server(srv)

"""The "Embeddings Generator" drop-in: GET /, POST /embeddings, GET /model/info, model load/unload.

Load and unload act on the pool every API shares, so the tests also check the effect where
other clients see it: GET /v1/models, /health, and eviction under --max-loaded-models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from embedserve import __version__
from embedserve.backends.fake import FakeBackend
from tests.support.api import DIM, MODEL, expected, raw_vector
from tests.support.api import assert_openai_error as assert_error

URL = "/embeddings"
INFO_KEYS = {
    "model_name", "aliases", "source", "dimensions", "max_seq_length", "device", "backend", "pooling",
    "normalize", "family", "prefixes", "load_seconds", "loaded_at", "dtype", "fidelity", "resident_memory_bytes",
    "weights_bytes", "speedup_vs_fp32", "kind", "tasks", "multivector_dimensions", "compiled", "compile_speedup", "shared_weights_bytes",
}  # fmt: skip


def loaded(client) -> list[str]:
    return [card["id"] for card in client.get("/v1/models").json()["data"]]


# ---- GET / ------------------------------------------------------------------------------


def test_root_describes_the_api_and_its_links_work(client):
    r = client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "embedserve" and body["version"] == __version__
    assert isinstance(body["description"], str) and body["description"]
    assert body["default_model"] == MODEL and body["models"] == [MODEL]
    assert (body["docs"], body["redoc"], body["openapi"]) == ("/docs", "/redoc", "/openapi.json")
    # the Embeddings Generator's root keys, for its clients
    assert body["message"] == "embedserve API" and body["health"] == "/health"
    for link in ("docs", "redoc", "openapi", "health"):
        assert client.get(body[link]).status_code == 200


def test_openapi_documents_every_drop_in_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/", "get"), ("/embeddings", "post"), ("/model/info", "get"), ("/model/load", "post"),
        ("/model/unload", "post"), ("/embedding", "post"), ("/v1/encode", "get"), ("/v1/encode", "post"),
        ("/vectorize", "post"), ("/vectorize-batch", "post"),
    ]:  # fmt: skip
        assert method in paths[path], (path, method)


# ---- POST /embeddings -------------------------------------------------------------------


def test_embeddings_with_only_texts(client, fake_backend):
    texts = ["A man is playing a guitar.", "A cat sleeps."]
    r = client.post(URL, json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"embeddings", "model_name", "dimensions", "processing_time", "total_texts"}
    assert body["model_name"] == MODEL
    assert body["dimensions"] == DIM and body["total_texts"] == 2
    assert isinstance(body["processing_time"], float) and 0 <= body["processing_time"] < 10
    assert len(body["embeddings"]) == 2
    for text, vector in zip(texts, body["embeddings"], strict=True):
        assert len(vector) == DIM and all(isinstance(x, float) for x in vector)
        np.testing.assert_allclose(vector, expected(fake_backend, text), rtol=1e-5, atol=1e-6)


def test_embeddings_with_every_field_as_documented(client, fake_backend):
    body = {"texts": ["hello world"], "model_name": MODEL, "normalize": True, "batch_size": 16}
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == MODEL and out["total_texts"] == 1 and out["dimensions"] == DIM
    np.testing.assert_allclose(out["embeddings"][0], expected(fake_backend, "hello world"), rtol=1e-5, atol=1e-6)


def test_batch_size_changes_nothing(client):
    texts = [f"text number {i}" for i in range(5)]
    a = client.post(URL, json={"texts": texts, "batch_size": 1}).json()
    b = client.post(URL, json={"texts": texts, "batch_size": 64}).json()
    assert a["embeddings"] == b["embeddings"]


def test_normalize_false_returns_the_raw_pooled_vector(client, fake_backend):
    r = client.post(URL, json={"texts": ["raw please"], "normalize": False})
    assert r.status_code == 200, r.text
    vector = np.asarray(r.json()["embeddings"][0])
    np.testing.assert_allclose(vector, raw_vector(fake_backend, "raw please"), rtol=1e-5, atol=1e-6)
    assert not math.isclose(np.linalg.norm(vector), 1.0, rel_tol=1e-3)


def test_normalize_true_on_a_model_that_does_not_normalise(make_client):
    backend = FakeBackend(normalize=False)
    client = make_client(backend=backend)
    default = np.asarray(client.post(URL, json={"texts": ["abc"]}).json()["embeddings"][0])
    assert math.isclose(np.linalg.norm(default), 1.0, rel_tol=1e-5)
    np.testing.assert_allclose(default, expected(backend, "abc"), rtol=1e-5, atol=1e-6)


def test_model_name_loads_on_demand(client, fake_backend):
    r = client.post(URL, json={"texts": ["x y"], "model_name": "org/other-model"})
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == "org/other-model"
    assert loaded(client) == [MODEL, "org/other-model"]


def test_model_name_by_alias_is_echoed(client):
    r = client.post(URL, json={"texts": ["x"], "model_name": "fake-model"})
    assert r.status_code == 200 and r.json()["model_name"] == "fake-model"


def test_input_type_applies_the_models_prefixes(make_client):
    backend = FakeBackend(prompts={"query": "q: ", "document": "d: "})
    client = make_client(backend=backend)
    text = "what is this"
    for input_type, prefix in [("query", "q: "), ("document", "d: "), (None, "")]:
        body = {"texts": [text]} | ({"input_type": input_type} if input_type else {})
        vector = client.post(URL, json=body).json()["embeddings"][0]
        np.testing.assert_allclose(vector, expected(backend, prefix + text), rtol=1e-5, atol=1e-6)


def test_unknown_model_name_is_404(client):
    error = assert_error(client.post(URL, json={"texts": ["x"], "model_name": "missing-x"}), 404)
    assert error["param"] == "model_name" and error["code"] == "model_not_found"
    assert "'missing-x'" in error["message"]
    assert loaded(client) == [MODEL]


def test_model_name_not_loaded_without_load_on_demand_is_404(make_client):
    client = make_client(load_on_demand=False)
    error = assert_error(client.post(URL, json={"texts": ["x"], "model_name": "org/other"}), 404, param="model_name")
    assert "'org/other'" in error["message"] and MODEL in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({}, "texts", "is required"),
        ({"texts": []}, "texts", "at least 1 item"),
        ({"texts": "one text"}, "texts", "valid list"),
        ({"texts": ["ok", 1]}, "texts[1]", "valid string"),
        ({"texts": ["ok", None]}, "texts[1]", "valid string"),
        ({"texts": ["ok", ""]}, "texts[1]", "at least 1 character"),
        ({"texts": ["x"], "normalize": "yes"}, "normalize", "valid boolean"),
        ({"texts": ["x"], "normalize": 1}, "normalize", "valid boolean"),
        ({"texts": ["x"], "batch_size": 0}, "batch_size", "greater than or equal to 1"),
        ({"texts": ["x"], "batch_size": "16"}, "batch_size", "valid integer"),
        ({"texts": ["x"], "batch_size": True}, "batch_size", "valid integer"),
        ({"texts": ["x"], "model_name": ""}, "model_name", "at least 1 character"),
        ({"texts": ["x"], "model_name": 5}, "model_name", "valid string"),
        ({"texts": ["x"], "input_type": "passage"}, "input_type", "'query' or 'document'"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, body, param, words):
    error = assert_error(client.post(URL, json=body), 422, param=param, code="invalid_request")
    assert words in error["message"] and param in error["message"]


@pytest.mark.parametrize("raw", [b"", b"[]", b'"texts"', b"{bad", b'{"texts": ["\\udfff"]}'])
def test_malformed_bodies_are_422(client, raw):
    assert_error(client.post(URL, content=raw, headers={"content-type": "application/json"}), 422)


def test_too_many_texts_and_overlong_texts_name_texts(make_client):
    client = make_client(max_inputs=2, truncate=False)
    error = assert_error(client.post(URL, json={"texts": ["a", "b", "c"]}), 422, param="texts")
    assert error["message"].startswith("'texts' has 3 items; at most 2")
    error = assert_error(client.post(URL, json={"texts": ["a", " ".join(["w"] * 30)]}), 422, param="texts[1]")
    assert error["message"].startswith("texts[1] has at least 32 tokens")


# ---- GET /model/info --------------------------------------------------------------------


def test_model_info_describes_the_default_model(make_client):
    client = make_client(backend=FakeBackend(prompts={"query": "q: ", "document": "d: "}))
    r = client.get("/model/info")
    assert r.status_code == 200
    info = r.json()
    generator_keys = {"model_type", "embedding_dimensions", "max_sequence_length", "is_loaded"}
    assert set(info) == INFO_KEYS | generator_keys | {"loaded_models"}
    # the Embeddings Generator's own keys, beside ours
    assert (info["model_type"], info["embedding_dimensions"], info["max_sequence_length"], info["is_loaded"]) == (
        "fake", DIM, 16, True)
    assert info["model_name"] == MODEL
    assert info["aliases"] == ["fake-model", MODEL]
    assert (info["dimensions"], info["max_seq_length"], info["device"]) == (DIM, 16, "cpu")
    assert (info["backend"], info["pooling"], info["normalize"]) == ("fake", "mean", True)
    assert (info["kind"], info["tasks"], info["multivector_dimensions"]) == ("fake", ["embed"], None)
    assert info["family"] == "generic"
    assert info["prefixes"] == {"query": "q: ", "document": "d: ", "default": "", "source": "model config"}
    assert isinstance(info["load_seconds"], float) and info["load_seconds"] >= 0
    assert [m["model_name"] for m in info["loaded_models"]] == [MODEL]
    assert info["loaded_models"][0] == {k: v for k, v in info.items() if k not in generator_keys | {"loaded_models"}}


def test_model_info_shows_family_prefixes(make_client):
    client = make_client(models=("intfloat/e5-small-v2",))
    info = client.get("/model/info").json()
    assert info["family"] == "e5"
    assert info["prefixes"] == {"query": "query: ", "document": "passage: ", "default": "", "source": "family"}


# ---- POST /model/load and /model/unload ---------------------------------------------------


def test_load_then_unload_a_model(client):
    r = client.post("/model/load", params={"model_name": "org/second"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "loaded" and body["model_name"] == "org/second"
    assert body["message"] == "Model org/second loaded successfully"  # the Embeddings Generator's answer
    assert set(body) == INFO_KEYS | {"status", "message"}
    assert loaded(client) == [MODEL, "org/second"]
    listed = [m["model_name"] for m in client.get("/model/info").json()["loaded_models"]]
    assert listed == [MODEL, "org/second"]
    # the loaded model serves the other APIs too
    assert client.post("/v1/embeddings", json={"input": "x", "model": "second"}).status_code == 200

    r = client.post("/model/unload", params={"model_name": "org/second"})
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "unloaded", "message": "Model unloaded successfully", "model_name": "org/second",
                        "loaded_models": [MODEL]}
    assert loaded(client) == [MODEL]
    assert [m["model_name"] for m in client.get("/model/info").json()["loaded_models"]] == [MODEL]


def test_load_an_already_loaded_model_by_alias(client):
    r = client.post("/model/load", params={"model_name": "fake-model"})
    assert r.status_code == 200
    assert r.json()["status"] == "already_loaded" and r.json()["model_name"] == MODEL
    assert r.json()["message"] == "Model fake-model was already loaded"
    assert loaded(client) == [MODEL]


def test_load_is_refused_without_load_on_demand(make_client):
    """--no-load-on-demand fixes the set of models: /model/load must not get around it."""
    client = make_client(load_on_demand=False)
    error = assert_error(client.post("/model/load", params={"model_name": "org/second"}), 404, param="model_name")
    assert "'org/second' is not loaded" in error["message"] and "--no-load-on-demand" in error["message"]
    assert loaded(client) == [MODEL]
    r = client.post("/model/load", params={"model_name": MODEL})  # what is loaded stays loadable
    assert r.status_code == 200 and r.json()["status"] == "already_loaded"


def test_loading_past_max_loaded_models_evicts_a_request_loaded_model_never_the_start_up_one(make_client):
    client = make_client(max_loaded_models=1)
    r = client.post("/model/load", params={"model_name": "org/second"})
    assert r.status_code == 200, r.text
    assert loaded(client) == [MODEL, "org/second"]  # the start-up model does not count
    r = client.post("/model/load", params={"model_name": "org/third"})
    assert r.status_code == 200, r.text
    assert loaded(client) == [MODEL, "org/third"]  # org/second, loaded by a request, made room
    info = client.get("/model/info").json()
    assert info["model_name"] == MODEL and len(info["loaded_models"]) == 2
    assert client.get("/health").json()["model"] == MODEL


def test_unload_without_a_name_unloads_the_default_model(client):
    client.post("/model/load", params={"model_name": "org/second"})
    r = client.post("/model/unload")
    assert r.status_code == 200
    assert r.json()["model_name"] == MODEL and r.json()["loaded_models"] == ["org/second"]
    assert client.get("/model/info").json()["model_name"] == "org/second"


def test_after_an_unload_the_next_embedding_request_loads_the_default_model_again(client):
    """The Embeddings Generator's promise: until then /model/info is a 503 that says so, with Retry-After."""
    assert client.post("/model/unload").status_code == 200
    assert loaded(client) == []
    r = client.get("/model/info")
    error = assert_error(r, 503, code="not_ready")
    assert error["message"] == "No model is currently loaded. Model will be loaded on first embedding request."
    assert r.json()["detail"] == error["message"] and int(r.headers["retry-after"]) >= 1
    assert client.get("/ready").status_code == 503
    health = client.get("/health").json()
    assert health["status"] == "unavailable" and health["model_loaded"] is False
    # unloading when nothing is loaded: 200 with a message, as the Embeddings Generator answers
    r = client.post("/model/unload")
    assert r.status_code == 200 and r.json() == {
        "status": "nothing_loaded", "message": "No model was loaded", "model_name": None, "loaded_models": []}
    r = client.post(URL, json={"texts": ["x"]})
    assert r.status_code == 200 and r.json()["model_name"] == MODEL
    assert loaded(client) == [MODEL] and client.get("/ready").status_code == 200


def test_without_load_on_demand_every_model_unloaded_is_503_until_one_is_loaded(make_client):
    client = make_client(load_on_demand=False)
    assert client.post("/model/unload").status_code == 200
    for r in (client.get("/model/info"), client.post(URL, json={"texts": ["x"]})):
        error = assert_error(r, 503, code="not_ready")
        assert "POST /model/load" in error["message"] and int(r.headers["retry-after"]) >= 1
    assert loaded(client) == []
    r = client.post("/model/load", params={"model_name": MODEL})  # the start-up model: part of the fixed set
    assert r.status_code == 200 and r.json()["status"] == "loaded" and loaded(client) == [MODEL]


def test_load_an_unknown_model_is_404(client):
    error = assert_error(client.post("/model/load", params={"model_name": "missing-x"}), 404)
    assert error["param"] == "model_name" and error["code"] == "model_not_found"
    assert "'missing-x'" in error["message"]
    assert loaded(client) == [MODEL]


def test_unload_a_model_that_is_not_loaded_is_404(client):
    error = assert_error(client.post("/model/unload", params={"model_name": "org/second"}), 404)
    assert error["param"] == "model_name" and error["code"] == "model_not_found"
    assert "'org/second' is not loaded" in error["message"] and MODEL in error["message"]
    assert loaded(client) == [MODEL]


@pytest.mark.parametrize(("path", "params"), [("/model/load", {}), ("/model/load", {"model_name": ""})])
def test_load_needs_a_model_name(client, path, params):
    error = assert_error(client.post(path, params=params), 422, param="model_name")
    assert "model_name" in error["message"]


def test_unload_with_an_empty_name_is_422(client):
    assert_error(client.post("/model/unload", params={"model_name": ""}), 422, param="model_name")
    assert loaded(client) == [MODEL]


# POST / is Text Embeddings Inference's root route (api/tei_root.py); GET / stays this API's.
@pytest.mark.parametrize(("method", "path"), [("GET", "/model/load"), ("GET", "/model/unload"), ("PUT", "/")])
def test_wrong_method_is_405(client, method, path):
    assert_error(client.request(method, path), 405)


def test_readme_lists_every_drop_in_route():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for route in [
        "`POST /embedding`", "`GET /`", "`POST /embeddings`", "`GET /model/info`", "`POST /model/load?model_name=...`",
        "`POST /model/unload[?model_name=...]`", "`GET` or `POST /v1/encode`", "`POST /vectorize`",
        "`POST /vectorize-batch`", "## Migrating from another embedding server", "--models-list-style names",
    ]:  # fmt: skip
        assert route in readme, route


def test_unloading_a_model_removes_its_metrics_series(client):
    assert client.post("/model/load", params={"model_name": "org/second"}).status_code == 200
    before = client.get("/metrics").text
    assert 'embedserve_model_info{backend="fake",device="cpu",dtype="fp32",model="org/second"} 1.0' in before
    assert client.post("/model/unload", params={"model_name": "org/second"}).status_code == 200
    after = client.get("/metrics").text
    assert 'model="org/second"}' not in after.split("embedserve_model_info")[1].split("# HELP")[0]
    assert f'embedserve_model_info{{backend="fake",device="cpu",dtype="fp32",model="{MODEL}"}} 1.0' in after

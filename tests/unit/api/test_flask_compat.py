"""The Flask "Sentence Transformer API" drop-in: POST /embedding (map and KServe), /health, CORS.

A client of that server changes only its base URL, so every response is checked in the exact
shape it expects: ids mapped to vectors written as JSON-array strings, or KServe predictions,
with each vector equal to what the fake backend computes for that text.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedserve import __version__
from tests.support.api import DIM, MODEL, expected
from tests.support.api import assert_openai_error as assert_error

URL = "/embedding"


# ---- id -> text map ---------------------------------------------------------------------


def test_map_answers_each_id_with_its_vector_as_a_json_array_string(client, fake_backend):
    body = {"id1": "This is the first sentence.", "id2": "Here is another sentence."}
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    out = r.json()
    assert list(out) == ["id1", "id2"]  # same ids, same order
    for key, text in body.items():
        value = out[key]
        assert isinstance(value, str)
        assert value.startswith("[") and value.endswith("]") and ", " in value
        floats = json.loads(value)
        assert len(floats) == DIM and all(isinstance(x, float) for x in floats)
        assert value == json.dumps(floats)  # exactly Python's json.dumps of the float list
        np.testing.assert_allclose(floats, expected(fake_backend, text), rtol=1e-5, atol=1e-6)
    assert out["id1"] != out["id2"]


def test_map_strings_are_exactly_the_float32_vectors_of_the_openai_route(client):
    texts = {"a": "one two three", "b": "four"}
    strings = client.post(URL, json=texts).json()
    floats = client.post("/v1/embeddings", json={"input": list(texts.values())}).json()["data"]
    for key, item in zip(texts, floats, strict=True):
        parsed = np.asarray(json.loads(strings[key]), dtype=np.float32)
        np.testing.assert_array_equal(parsed, np.asarray(item["embedding"], dtype=np.float32))


def test_map_keeps_many_ids_apart_and_in_order(client, fake_backend):
    body = {f"doc-{i}": " ".join(["word"] * (i + 1)) for i in range(12)}
    out = client.post(URL, json=body).json()
    assert list(out) == list(body)
    for key, text in body.items():
        np.testing.assert_allclose(json.loads(out[key]), expected(fake_backend, text), rtol=1e-5, atol=1e-6)


def test_an_id_called_instances_with_a_string_is_just_an_id(client, fake_backend):
    out = client.post(URL, json={"instances": "a plain text", "x": "other"}).json()
    assert set(out) == {"instances", "x"}
    np.testing.assert_allclose(json.loads(out["instances"]), expected(fake_backend, "a plain text"), rtol=1e-5)


def test_same_text_under_two_ids_gives_the_same_vector(client):
    out = client.post(URL, json={"k1": "same words", "k2": "same words"}).json()
    assert out["k1"] == out["k2"]


# ---- KServe V1 --------------------------------------------------------------------------


def test_kserve_instances_answer_predictions(client, fake_backend):
    texts = ["This is the first sentence.", "Here is another sentence.", "third"]
    r = client.post(URL, json={"instances": texts})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"predictions"}
    assert len(out["predictions"]) == len(texts)
    for text, vector in zip(texts, out["predictions"], strict=True):
        assert isinstance(vector, list) and len(vector) == DIM and all(isinstance(x, float) for x in vector)
        np.testing.assert_allclose(vector, expected(fake_backend, text), rtol=1e-5, atol=1e-6)


# ---- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"id1": "ok", "id2": 3}, "id2", "valid string"),
        ({"id1": None}, "id1", "valid string"),
        ({"id1": ["a"]}, "id1", "valid string"),
        ({"id1": {"t": "a"}}, "id1", "valid string"),
        ({"id1": True}, "id1", "valid string"),
        ({"123": 4.5}, "123", "valid string"),  # a digit-only id is a key, not a list index
        ({"id1": "ok", "id2": ""}, "id2", "at least 1 character"),
        ({"instances": 5}, "instances", "valid list"),
        ({"instances": None}, "instances", "valid list"),
        ({"instances": {"a": "b"}}, "instances", "valid list"),
        ({"instances": ["ok", 7]}, "instances[1]", "valid string"),
        ({"instances": ["ok", ""]}, "instances[1]", "at least 1 character"),
        ({"instances": ["ok"], "id2": "text"}, "id2", "not permitted"),
    ],
)
def test_bad_bodies_are_422_naming_the_key(client, body, param, words):
    error = assert_error(client.post(URL, json=body), 422, param=param, code="invalid_request")
    assert words in error["message"]
    if param is not None:
        assert error["message"].startswith(f"'{param}': ")


@pytest.mark.parametrize(("body", "param", "words"), [({}, None, "no JSON data"), ({"instances": []}, "instances", "no sentences")])
def test_nothing_to_embed_is_400_as_the_flask_server_answered(client, body, param, words):
    r = client.post(URL, json=body)
    error = assert_error(r, 400, param=param, code="invalid_parameter")
    assert words in error["message"] and r.json()["detail"] == error["message"]


@pytest.mark.parametrize("body", [["a", "b"], "text", 42, None])
def test_a_body_that_is_not_an_object_is_422(client, body):
    error = assert_error(client.post(URL, json=body), 422)
    assert "dictionary" in error["message"] or "required" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"id1": "a",}', b'{"id1": "\\ud800"}'])
def test_malformed_json_is_422(client, raw):
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_error(r, 422)


def test_too_many_ids_names_the_request_body(make_client):
    client = make_client(max_inputs=2)
    error = assert_error(client.post(URL, json={"a": "x", "b": "y", "c": "z"}), 422, param=None)
    assert error["message"] == "the request body has 3 items; at most 2 are allowed per request"
    error = assert_error(client.post(URL, json={"instances": ["x", "y", "z"]}), 422, param="instances")
    assert error["message"].startswith("'instances' has 3 items")


def test_overlong_text_without_truncation_names_its_id(make_client):
    client = make_client(truncate=False)
    error = assert_error(client.post(URL, json={"short": "a b", "long": " ".join(["w"] * 20)}), 422, param="long")
    assert error["message"].startswith("'long' has at least 22 tokens")
    error = assert_error(client.post(URL, json={"instances": ["a", " ".join(["w"] * 20)]}), 422)
    assert error["param"] == "instances[1]" and error["message"].startswith("instances[1] has at least 22 tokens")


def test_get_is_405(client):
    assert_error(client.get(URL), 405)


# ---- /health and CORS, as that server's clients use them ---------------------------------


def test_health_reports_healthy_and_the_model(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["model"] == MODEL
    assert body["version"] == __version__


def test_cors_preflight_for_a_browser_client(client):
    r = client.options(
        URL,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type,X-Api-Key",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"OPTIONS", "POST", "GET"} <= methods
    headers = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-api-key"} <= headers


def test_cors_on_the_actual_post(client):
    r = client.post(URL, json={"id1": "x"}, headers={"Origin": "https://app.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"

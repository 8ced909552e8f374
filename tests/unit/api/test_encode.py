"""The "Sentence embeddings over HTTP" drop-in: GET (and POST) /v1/encode with a JSON body.

That server only serves what it has loaded, so /v1/encode must answer 400 for any other
model, as it did ("Model '...' does not exist"), and must not load it, even with load-on-demand
on for the other routes.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.api import DIM, MODEL, expected
from tests.support.api import assert_openai_error as assert_error

URL = "/v1/encode"


def assert_encoded(body: dict, texts: list[str], model: str, backend) -> None:
    assert set(body) == {"data", "model", "object"}
    assert body["object"] == "list" and body["model"] == model
    assert len(body["data"]) == len(texts)
    for i, (text, item) in enumerate(zip(texts, body["data"], strict=True)):
        assert set(item) == {"dims", "embedding", "index", "object"}
        assert item["object"] == "embedding" and item["index"] == i and item["dims"] == DIM
        assert len(item["embedding"]) == DIM and all(isinstance(x, float) for x in item["embedding"])
        np.testing.assert_allclose(item["embedding"], expected(backend, text), rtol=1e-5, atol=1e-6)


def loaded(client) -> list[str]:
    return [card["id"] for card in client.get("/v1/models").json()["data"]]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("model", [MODEL, "fake-model", "FAKE-MODEL"])
def test_encode_with_a_json_body(client, fake_backend, method, model):
    texts = ["iPhone", "Samsung"]
    r = client.request(method, URL, json={"model": model, "input": texts})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert_encoded(r.json(), texts, model, fake_backend)


def test_model_may_be_omitted_for_the_default(client, fake_backend):
    r = client.request("GET", URL, json={"input": ["only text"]})
    assert r.status_code == 200, r.text
    assert_encoded(r.json(), ["only text"], MODEL, fake_backend)


def test_a_model_listed_by_v1_models_is_served(client, fake_backend):
    assert client.post("/model/load", params={"model_name": "org/second"}).status_code == 200
    assert "org/second" in loaded(client)
    r = client.request("GET", URL, json={"model": "second", "input": ["a b"]})
    assert r.status_code == 200, r.text
    assert_encoded(r.json(), ["a b"], "second", fake_backend)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_model_that_is_not_loaded_is_400_and_stays_unloaded(client, method):
    r = client.request(method, URL, json={"model": "org/other", "input": ["x"]})
    error = assert_error(r, 400, param="model", code="model_not_found")
    assert r.json()["detail"] == error["message"]
    assert "'org/other' is not loaded" in error["message"] and MODEL in error["message"]
    assert loaded(client) == [MODEL]  # load-on-demand is on, yet nothing was loaded


def test_an_unloaded_model_is_503_with_retry_after(client):
    """Unloaded is a state that passes (it can be loaded again): 503 with Retry-After, never 404."""
    assert client.post("/model/load", params={"model_name": "org/second"}).status_code == 200
    assert client.post("/model/unload", params={"model_name": "org/second"}).status_code == 200
    r = client.request("GET", URL, json={"model": "org/second", "input": ["x"]})
    error = assert_error(r, 503)
    assert error["code"] == "not_ready" and "'org/second' was unloaded" in error["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert_error(client.request("GET", URL, json={"model": "org/never-loaded", "input": ["x"]}), 400)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_input_may_be_one_text(client, fake_backend, method):
    r = client.request(method, URL, json={"model": MODEL, "input": "iPhone"})
    assert r.status_code == 200, r.text
    assert_encoded(r.json(), ["iPhone"], MODEL, fake_backend)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": MODEL}, "input", "is required"),
        ({"model": MODEL, "input": []}, "input", "at least 1 item"),
        ({"model": MODEL, "input": 5}, "input", "valid list"),
        ({"model": MODEL, "input": ""}, "input[0]", "at least 1 character"),
        ({"model": MODEL, "input": ["ok", 3]}, "input[1]", "valid string"),
        ({"model": MODEL, "input": [""]}, "input[0]", "at least 1 character"),
        ({"model": 7, "input": ["x"]}, "model", "valid string"),
        ({"model": "", "input": ["x"]}, "model", "at least 1 character"),
        ({"model": ["a"], "input": ["x"]}, "model", "valid string"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_bodies_are_422_naming_the_field(client, method, body, param, words):
    error = assert_error(client.request(method, URL, json=body), 422, param=param, code="invalid_request")
    assert words in error["message"] and error["message"].startswith(f"'{param}'")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_no_body_is_422(client, method):
    error = assert_error(client.request(method, URL), 422)
    assert error["message"] == "request body is required"


@pytest.mark.parametrize("raw", [b"{oops", b"[]", b"null", b'{"input": ["\\ud800"]}'])
def test_malformed_bodies_are_422(client, raw):
    assert_error(client.request("GET", URL, content=raw, headers={"content-type": "application/json"}), 422)


def test_too_many_inputs_names_input(make_client):
    client = make_client(max_inputs=1)
    error = assert_error(client.request("GET", URL, json={"input": ["a", "b"]}), 422, param="input")
    assert error["message"].startswith("'input' has 2 items")


def test_other_methods_are_405(client):
    assert_error(client.put(URL, json={"input": ["x"]}), 405)

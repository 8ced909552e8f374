"""Additions to the OpenAI routes: `input_type` on POST /v1/embeddings, `--models-list-style names`.

`input_type` must change the vector exactly as embedding the prefixed text would; leaving it
out must keep today's behaviour. The names style must be exactly
`{"data": ["<id>", ...], "object": "list"}`, and the default must stay OpenAI's shape.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from tests.support.api import MODEL, expected

URL = "/v1/embeddings"


def assert_error(response, status: int, *, param=..., code=...) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = body["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not ...:
        assert error["param"] == param
    if code is not ...:
        assert error["code"] == code
    return error


def embeddings(client, **body) -> list[np.ndarray]:
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    return [np.asarray(item["embedding"]) for item in r.json()["data"]]


@pytest.fixture
def prompted(make_client):
    backend = FakeBackend(prompts={"query": "q: ", "document": "d: "})
    return make_client(backend=backend), backend


# ---- input_type -------------------------------------------------------------------------


@pytest.mark.parametrize(("input_type", "prefix"), [("query", "q: "), ("document", "d: ")])
def test_input_type_applies_the_prefix(prompted, input_type, prefix):
    client, backend = prompted
    texts = ["how do magnets work", "magnets"]
    vectors = embeddings(client, input=texts, input_type=input_type)
    for text, vector in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(vector, expected(backend, prefix + text), rtol=1e-5, atol=1e-6)
        assert not np.allclose(vector, expected(backend, text))


def test_input_type_counts_the_prefix_tokens(prompted):
    client, _ = prompted
    plain = client.post(URL, json={"input": "one two"}).json()["usage"]["prompt_tokens"]
    query = client.post(URL, json={"input": "one two", "input_type": "query"}).json()["usage"]["prompt_tokens"]
    assert (plain, query) == (4, 5)  # "q:" is one more word for the fake tokenizer


@pytest.mark.parametrize("extra", [{}, {"input_type": None}])
def test_no_input_type_is_unchanged(prompted, extra):
    client, backend = prompted
    (vector,) = embeddings(client, input="plain text", **extra)
    np.testing.assert_allclose(vector, expected(backend, "plain text"), rtol=1e-5, atol=1e-6)


def test_input_type_with_a_family_prefix(make_client, fake_backend):
    client = make_client(models=("intfloat/e5-base-v2",))
    (vector,) = embeddings(client, input="capital of France", input_type="query")
    np.testing.assert_allclose(vector, expected(fake_backend, "query: capital of France"), rtol=1e-5, atol=1e-6)


def test_input_type_on_a_model_loaded_on_demand(client, fake_backend):
    (vector,) = embeddings(client, input="find me", model="intfloat/e5-small", input_type="document")
    np.testing.assert_allclose(vector, expected(fake_backend, "passage: find me"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["passage", "QUERY", "", 1, True, ["query"]])
def test_bad_input_type_is_422(client, value):
    error = assert_error(client.post(URL, json={"input": "x", "input_type": value}), 422, param="input_type")
    assert "'query' or 'document'" in error["message"]


@pytest.mark.parametrize("tokens", [[5, 6], [[5, 6], [7]]])
def test_input_type_with_token_ids_is_refused(client, tokens):
    error = assert_error(client.post(URL, json={"input": tokens, "input_type": "query"}), 422)
    assert "'input_type' applies to text input only" in error["message"]


# ---- GET /v1/models styles --------------------------------------------------------------


def test_names_style(make_client):
    client = make_client(models_list_style="names")
    r = client.get("/v1/models")
    assert r.status_code == 200
    # each model by the last part of the name it was started (or loaded) with, as that server listed them
    assert r.json() == {"data": ["fake-model"], "object": "list"}
    assert client.post(URL, json={"input": "x", "model": "org/other"}).status_code == 200  # on demand
    assert client.post(URL, json={"input": "x", "model": "org2/other"}).status_code == 200
    # "other" already names org/other: the second is listed by its id, so every listed name is served
    assert client.get("/v1/models").json() == {"data": ["fake-model", "other", "org2/other"], "object": "list"}
    for name in client.get("/v1/models").json()["data"]:
        r = client.request("GET", "/v1/encode", json={"model": name, "input": "x"})
        assert r.status_code == 200 and r.json()["model"] == name
    # a single model keeps OpenAI's card
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL


def test_names_style_after_unload(make_client):
    client = make_client(models_list_style="names")
    client.post("/model/unload")
    assert client.get("/v1/models").json() == {"data": [], "object": "list"}


def test_openai_style_is_the_default(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == [MODEL]
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by", "tasks"}
    assert body["data"][0]["tasks"] == ["embed"]


def test_names_style_is_validated():
    from pydantic import ValidationError

    from embedserve.settings import Settings

    with pytest.raises(ValidationError):
        Settings(models_list_style="short")

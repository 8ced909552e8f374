"""The E5/BGE-M3 "Embedding Service" drop-in: POST /vectorize and POST /vectorize-batch.

`is_query` must pick the model's query or document prefix: the vector has to be exactly the
one of the prefixed text, whether the prefixes come from the model's own config or from its
family (E5's "query: " / "passage: ").
"""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from tests.support.api import DIM, expected
from tests.support.api import assert_openai_error as assert_error


def vectorize(client, **body) -> np.ndarray:
    r = client.post("/vectorize", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"vector"}
    assert len(out["vector"]) == DIM and all(isinstance(x, float) for x in out["vector"])
    return np.asarray(out["vector"])


def vectorize_batch(client, **body) -> list[np.ndarray]:
    r = client.post("/vectorize-batch", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"vectors"}
    assert all(len(v) == DIM for v in out["vectors"])
    return [np.asarray(v) for v in out["vectors"]]


@pytest.fixture
def prompted(make_client):
    backend = FakeBackend(prompts={"query": "q: ", "document": "d: "})
    return make_client(backend=backend), backend


def close(a, b) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- happy paths ------------------------------------------------------------------------


def test_vectorize_as_documented(client, fake_backend):
    close(vectorize(client, text="Hello world", is_query=True), expected(fake_backend, "Hello world"))


def test_vectorize_batch_as_documented(client, fake_backend):
    items = ["first passage", "second passage here", "third"]
    vectors = vectorize_batch(client, items=items, is_query=False)
    assert len(vectors) == len(items)
    for text, vector in zip(items, vectors, strict=True):
        close(vector, expected(fake_backend, text))


def test_is_query_picks_the_models_own_prefixes(prompted):
    client, backend = prompted
    text = "Hello world"
    close(vectorize(client, text=text, is_query=True), expected(backend, "q: " + text))
    close(vectorize(client, text=text, is_query=False), expected(backend, "d: " + text))
    close(vectorize(client, text=text), expected(backend, "d: " + text))  # is_query defaults to false
    assert not np.allclose(vectorize(client, text=text, is_query=True), expected(backend, text))


def test_batch_is_query_picks_the_prefixes_for_every_item(prompted):
    client, backend = prompted
    items = ["alpha", "beta gamma"]
    for is_query, prefix in [(True, "q: "), (False, "d: ")]:
        vectors = vectorize_batch(client, items=items, is_query=is_query)
        for text, vector in zip(items, vectors, strict=True):
            close(vector, expected(backend, prefix + text))
    for text, vector in zip(items, vectorize_batch(client, items=items), strict=True):
        close(vector, expected(backend, "d: " + text))


def test_e5_family_prefixes(make_client, fake_backend):
    client = make_client(models=("intfloat/multilingual-e5-large",))
    close(vectorize(client, text="how to bake", is_query=True), expected(fake_backend, "query: how to bake"))
    close(vectorize(client, text="bake at 200C", is_query=False), expected(fake_backend, "passage: bake at 200C"))


def test_bge_m3_needs_no_prefix(make_client, fake_backend):
    client = make_client(models=("BAAI/bge-m3",))
    close(vectorize(client, text="anything", is_query=True), expected(fake_backend, "anything"))
    close(vectorize(client, text="anything", is_query=False), expected(fake_backend, "anything"))


def test_single_and_batch_agree(prompted):
    client, _ = prompted
    single = vectorize(client, text="same text", is_query=True)
    (batched,) = vectorize_batch(client, items=["same text"], is_query=True)
    np.testing.assert_array_equal(single, batched)


# ---- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/vectorize", {}, "text", "is required"),
        ("/vectorize", {"is_query": True}, "text", "is required"),
        ("/vectorize", {"text": ""}, "text", "at least 1 character"),
        ("/vectorize", {"text": 5}, "text", "valid string"),
        ("/vectorize", {"text": None}, "text", "valid string"),
        ("/vectorize", {"text": ["a"]}, "text", "valid string"),
        ("/vectorize", {"text": "x", "is_query": "yes"}, "is_query", "valid boolean"),
        ("/vectorize", {"text": "x", "is_query": 1}, "is_query", "valid boolean"),
        ("/vectorize-batch", {}, "items", "is required"),
        ("/vectorize-batch", {"items": "one"}, "items", "valid list"),
        ("/vectorize-batch", {"items": ["a", 2]}, "items[1]", "valid string"),
        ("/vectorize-batch", {"items": ["a", ""]}, "items[1]", "at least 1 character"),
        ("/vectorize-batch", {"items": ["a"], "is_query": None}, "is_query", "valid boolean"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, path, body, param, words):
    error = assert_error(client.post(path, json=body), 422, param=param, code="invalid_request")
    assert words in error["message"] and error["message"].startswith(f"'{param}'")


@pytest.mark.parametrize("path", ["/vectorize", "/vectorize-batch"])
@pytest.mark.parametrize("raw", [b"", b"[]", b'"text"', b"{x", b'{"text": "\\ud800", "items": ["\\ud800"]}'])
def test_malformed_bodies_are_422(client, path, raw):
    assert_error(client.post(path, content=raw, headers={"content-type": "application/json"}), 422)


def test_limits_name_the_callers_fields(make_client):
    client = make_client(max_inputs=1, truncate=False)
    error = assert_error(client.post("/vectorize-batch", json={"items": ["a", "b"]}), 422, param="items")
    assert error["message"].startswith("'items' has 2 items; at most 1")
    long = " ".join(["w"] * 20)
    error = assert_error(client.post("/vectorize", json={"text": long}), 422, param="text")
    assert error["message"].startswith("'text' has at least 22 tokens")
    error = assert_error(client.post("/vectorize-batch", json={"items": [long]}), 422, param="items[0]")
    assert error["message"].startswith("items[0] has at least 22 tokens")


@pytest.mark.parametrize("path", ["/vectorize", "/vectorize-batch"])
def test_get_is_405(client, path):
    assert_error(client.get(path), 405)


# ---- the current version's other `items` formats ------------------------------------------


def test_an_id_map_answers_vectors_by_id(client, fake_backend):
    r = client.post("/vectorize-batch", json={"items": {"prod_1": "first document", "prod_2": "second one"}})
    assert r.status_code == 200, r.text
    vectors = r.json()["vectors"]
    assert list(vectors) == ["prod_1", "prod_2"]
    assert np.allclose(vectors["prod_2"], expected(fake_backend, "second one"), atol=1e-6)


def test_id_text_objects_answer_id_vector_objects(client, fake_backend):
    r = client.post("/vectorize-batch", json={"items": [{"id": 7, "text": "first document"}, {"id": "b", "text": "x"}]})
    assert r.status_code == 200, r.text
    vectors = r.json()["vectors"]
    assert [v["id"] for v in vectors] == [7, "b"]
    assert np.allclose(vectors[0]["vector"], expected(fake_backend, "first document"), atol=1e-6)


def test_empty_items_answer_no_vectors(client):
    for items, answer in (([], []), ({}, {})):
        r = client.post("/vectorize-batch", json={"items": items})
        assert r.status_code == 200 and r.json() == {"vectors": answer}


@pytest.mark.parametrize(
    ("items", "param", "words"),
    [
        ({"id1": "ok", "id2": 3}, "items.id2", "valid string"),
        ([{"id": 1}], "items[0].text", "is required"),
        ([{"id": 1, "text": "a"}, "b"], "items[1]", "valid dictionary"),
        ([{"id": 1.5, "text": "a"}], "items[0].id", "must be a string or an integer"),
    ],
)
def test_bad_items_of_each_format_are_named(client, items, param, words):
    error = assert_error(client.post("/vectorize-batch", json={"items": items}), 422, param=param)
    assert words in error["message"]


def test_an_input_error_names_the_map_key(make_client):
    client = make_client(truncate=False)
    long = " ".join(["w"] * 20)
    error = assert_error(client.post("/vectorize-batch", json={"items": {"a": "ok", "b": long}}), 422, param="b")
    assert "'b' has at least 22 tokens" in error["message"]

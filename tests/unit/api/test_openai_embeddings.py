"""POST /v1/embeddings on the fake backend: the response a client sees, shaped like OpenAI's.

Every vector is checked against what the FakeBackend computes for the same token ids, so a
test fails if a caller gets someone else's vector, a vector in the wrong order, or one that
is not normalised.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from embedserve.backends.fake import CLS, SEP
from tests.support.api import DIM, MODEL, assert_openai_error, expected_for_ids
from tests.support.api import expected as expected_for_text


def assert_embedding_list(body: dict, *, n: int, model: str, dim: int = DIM) -> list[np.ndarray]:
    """Exactly OpenAI's top-level shape; returns the vectors in `index` order."""
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["model"] == model
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert len(body["data"]) == n
    vectors = []
    for i, item in enumerate(body["data"]):
        assert set(item) == {"object", "index", "embedding"}
        assert item["object"] == "embedding"
        assert item["index"] == i
        assert isinstance(item["embedding"], list) and len(item["embedding"]) == dim
        assert all(isinstance(x, float) for x in item["embedding"])
        vectors.append(np.asarray(item["embedding"], dtype=np.float64))
    return vectors


# ---- shapes of input -------------------------------------------------------------------


def test_single_string(client, fake_backend):
    r = client.post("/v1/embeddings", json={"input": "hello world", "model": MODEL})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    (vec,) = assert_embedding_list(body, n=1, model=MODEL)
    assert body["usage"]["prompt_tokens"] == 2 + 2  # two words + CLS + SEP
    assert math.isclose(np.linalg.norm(vec), 1.0, rel_tol=1e-5)
    np.testing.assert_allclose(vec, expected_for_text(fake_backend, "hello world"), rtol=1e-5, atol=1e-6)


def test_list_of_strings_each_gets_its_own_vector_in_order(client, fake_backend):
    texts = ["the quick brown fox", "hello", "jumps over the lazy dog today", "hello"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = assert_embedding_list(body, n=4, model=MODEL)
    assert body["usage"]["total_tokens"] == sum(len(t.split()) + 2 for t in texts)
    for text, vec in zip(texts, vectors, strict=True):
        assert math.isclose(np.linalg.norm(vec), 1.0, rel_tol=1e-5)
        np.testing.assert_allclose(vec, expected_for_text(fake_backend, text), rtol=1e-5, atol=1e-6)
    # Distinct inputs give distinct vectors; the same text gives the same vector.
    assert not np.allclose(vectors[0], vectors[1])
    np.testing.assert_allclose(vectors[1], vectors[3], rtol=1e-6)


def test_single_token_id_list_is_one_input(client, fake_backend):
    r = client.post("/v1/embeddings", json={"input": [5, 6, 7], "model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    (vec,) = assert_embedding_list(body, n=1, model=MODEL)
    assert body["usage"]["prompt_tokens"] == 3 + 2
    np.testing.assert_allclose(vec, expected_for_ids(fake_backend, [CLS, 5, 6, 7, SEP]), rtol=1e-5, atol=1e-6)


def test_list_of_token_id_lists(client, fake_backend):
    inputs = [[5, 6, 7], [999], [0, 1, 2, 3]]
    r = client.post("/v1/embeddings", json={"input": inputs, "model": MODEL})
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = assert_embedding_list(body, n=3, model=MODEL)
    assert body["usage"]["total_tokens"] == (3 + 2) + (1 + 2) + (4 + 2)
    for ids, vec in zip(inputs, vectors, strict=True):
        np.testing.assert_allclose(vec, expected_for_ids(fake_backend, [CLS, *ids, SEP]), rtol=1e-5, atol=1e-6)


def test_token_ids_and_words_agree(client, fake_backend):
    """Sending a text's token ids gives exactly the vector of the text itself."""
    (ids,) = fake_backend.tokenize(["alpha beta"], truncate=True)
    by_text = client.post("/v1/embeddings", json={"input": "alpha beta"}).json()
    by_ids = client.post("/v1/embeddings", json={"input": ids[1:-1]}).json()
    assert by_text["data"][0]["embedding"] == by_ids["data"][0]["embedding"]
    assert by_text["usage"] == by_ids["usage"]


# ---- encoding_format and dimensions -----------------------------------------------------


def test_base64_decodes_to_the_float_vector(client):
    texts = ["one two", "three"]
    floats = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"})
    b64 = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
    assert floats.status_code == b64.status_code == 200, b64.text
    assert b64.json()["usage"] == floats.json()["usage"]
    for f_item, b_item in zip(floats.json()["data"], b64.json()["data"], strict=True):
        assert b_item["object"] == "embedding"
        assert isinstance(b_item["embedding"], str)
        raw = base64.b64decode(b_item["embedding"], validate=True)
        assert len(raw) == DIM * 4
        decoded = np.frombuffer(raw, dtype="<f4")
        np.testing.assert_array_equal(decoded, np.asarray(f_item["embedding"], dtype=np.float32))


def test_float_is_the_default_encoding(client):
    r = client.post("/v1/embeddings", json={"input": "x"})
    assert isinstance(r.json()["data"][0]["embedding"], list)


@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_dimensions_cuts_and_renormalises(client, fake_backend, fmt):
    texts = ["cut me down", "and me"]
    r = client.post("/v1/embeddings", json={"input": texts, "dimensions": 4, "encoding_format": fmt})
    assert r.status_code == 200, r.text
    for text, item in zip(texts, r.json()["data"], strict=True):
        if fmt == "base64":
            vec = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4").astype(np.float64)
        else:
            vec = np.asarray(item["embedding"], dtype=np.float64)
        assert vec.shape == (4,)
        assert math.isclose(np.linalg.norm(vec), 1.0, rel_tol=1e-5)
        np.testing.assert_allclose(vec, expected_for_text(fake_backend, text, dims=4), rtol=1e-5, atol=1e-6)
        # ... which is not simply the first 4 components of the full unit vector.
        full = expected_for_text(fake_backend, text)
        assert not np.allclose(vec, full[:4])


def test_dimensions_equal_to_model_dimension_is_the_full_vector(client, fake_backend):
    r = client.post("/v1/embeddings", json={"input": "full size", "dimensions": DIM})
    assert r.status_code == 200, r.text
    vec = np.asarray(r.json()["data"][0]["embedding"])
    np.testing.assert_allclose(vec, expected_for_text(fake_backend, "full size"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [-1, DIM + 1, 4096])  # 0 is the whole vector (Infinity's clients send it)
def test_dimensions_out_of_range_is_400(client, dims):
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": dims})
    error = assert_openai_error(r, 400, type_="invalid_request_error", param="dimensions")
    assert str(dims) in error["message"]
    assert f"between 1 and {DIM}" in error["message"]


def test_boolean_dimensions_is_rejected(client):
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": True})
    assert_openai_error(r, 422, type_="invalid_request_error", param="dimensions")


# ---- other request fields ---------------------------------------------------------------


def test_user_is_accepted_and_changes_nothing(client):
    plain = client.post("/v1/embeddings", json={"input": "who am i"})
    with_user = client.post("/v1/embeddings", json={"input": "who am i", "user": "user-1234"})
    assert with_user.status_code == 200, with_user.text
    assert with_user.json() == plain.json()


def test_unknown_extra_fields_are_ignored(client):
    r = client.post("/v1/embeddings", json={"input": "x", "something_new": {"a": 1}})
    assert r.status_code == 200, r.text
    assert_embedding_list(r.json(), n=1, model=MODEL)


# ---- model selection --------------------------------------------------------------------


@pytest.mark.parametrize("body", [{"input": "x"}, {"input": "x", "model": None}])
def test_model_omitted_uses_default_model(client, body):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    assert_embedding_list(r.json(), n=1, model=MODEL)


@pytest.mark.parametrize("name", [MODEL, "fake-model"])
def test_model_by_id_or_alias_echoes_requested_name(client, name):
    r = client.post("/v1/embeddings", json={"input": "same text", "model": name})
    assert r.status_code == 200, r.text
    assert_embedding_list(r.json(), n=1, model=name)
    default = client.post("/v1/embeddings", json={"input": "same text"}).json()
    assert r.json()["data"] == default["data"]


@pytest.mark.parametrize("name", ["no-such-model", "org/other-model"])
def test_unknown_model_is_404_without_load_on_demand(make_client, name):
    client = make_client(load_on_demand=False)
    r = client.post("/v1/embeddings", json={"input": "x", "model": name})
    error = assert_openai_error(r, 404, type_="invalid_request_error", param="model", code="model_not_found")
    assert f"'{name}'" in error["message"]
    assert MODEL in error["message"]  # says what is loaded


@pytest.mark.parametrize("name", ["missing-model", "missing/other-model"])
def test_model_that_cannot_be_found_is_404(client, name):
    r = client.post("/v1/embeddings", json={"input": "x", "model": name})
    error = assert_openai_error(r, 404, type_="invalid_request_error", param="model", code="model_not_found")
    assert f"'{name}'" in error["message"]

"""Cohere's POST /v2/embed and POST /v1/embed on the fake backend.

Every embedding type must be exactly sentence-transformers' `quantize_embeddings` of the float
vectors /v1/embeddings gives: int8/uint8 with the ranges of the calibration texts embedded as
documents (the calibration this server does once per loaded model), binary/ubinary without
ranges, base64 the float32 bytes. Errors keep the server's shape and name Cohere's fields.
"""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from embedserve.backends.fake import FakeBackend
from embedserve.backends.fidelity import calibration_texts
from embedserve.engine.quantization import CALIBRATIONS
from tests.support.api import assert_openai_error, expected

TEXTS = ["how do magnets work", "a cat sleeps on the mat", "red car"]
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
PROMPTS = {"query": "q: ", "document": "d: ", "classification": "c: "}


def v2(client, **body):
    r = client.post("/v2/embed", json={"input_type": "search_document", "texts": TEXTS, **body})
    assert r.status_code == 200, r.text
    return r.json()


def openai_vectors(client, texts, **body) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": texts, **body})
    assert r.status_code == 200, r.text
    return np.array([item["embedding"] for item in r.json()["data"]], dtype=np.float32)


def reference_ranges(client, **body) -> np.ndarray:
    """What the server calibrates on: the calibration texts as documents, min and max per dimension."""
    vectors = openai_vectors(client, calibration_texts(), input_type="document", **body)
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0)))


def rows_embedded(backend: FakeBackend) -> int:
    return sum(backend.batch_sizes)


@pytest.fixture
def prompted(make_client):
    backend = FakeBackend(prompts=PROMPTS)
    return make_client(backend=backend), backend


# ---- shapes ------------------------------------------------------------------------------


def test_v2_answers_cohere_embed_by_type_shape(client):
    body = v2(client, embedding_types=ALL_TYPES, model="org/fake-model", max_tokens=512, priority=0, truncate="END")
    assert set(body) == {"id", "embeddings", "texts", "meta", "response_type"}
    uuid.UUID(body["id"])
    assert body["response_type"] == "embeddings_by_type"
    assert body["texts"] == TEXTS
    assert body["meta"]["api_version"] == {"version": "2"}
    assert body["meta"]["billed_units"]["input_tokens"] == sum(len(t.split()) + 2 for t in TEXTS)  # + CLS, SEP
    assert list(body["embeddings"]) == ALL_TYPES
    for kind in ("float", "int8", "uint8"):
        assert np.array(body["embeddings"][kind]).shape == (3, 8)
    for kind in ("binary", "ubinary"):
        assert np.array(body["embeddings"][kind]).shape == (3, 1)


def test_v2_defaults_to_float_only(client):
    body = v2(client)
    assert list(body["embeddings"]) == ["float"]
    floats = np.array(body["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_array_equal(floats, openai_vectors(client, TEXTS, input_type="document"))


def test_v1_without_types_answers_floats(client):
    r = client.post("/v1/embed", json={"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "response_type", "embeddings", "texts", "meta"}
    assert body["response_type"] == "embeddings_floats"
    assert body["meta"]["api_version"] == {"version": "1"}
    np.testing.assert_array_equal(np.array(body["embeddings"], dtype=np.float32), openai_vectors(client, TEXTS))


def test_v1_with_types_answers_by_type(client):
    r = client.post("/v1/embed", json={"texts": TEXTS, "input_type": "search_query", "embedding_types": ["int8", "float"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response_type"] == "embeddings_by_type" and list(body["embeddings"]) == ["int8", "float"]


def test_repeated_types_are_answered_once(client):
    assert list(v2(client, embedding_types=["ubinary", "float", "ubinary"])["embeddings"]) == ["ubinary", "float"]


def test_inputs_with_text_parts(client):
    inputs = [{"content": [{"type": "text", "text": t}]} for t in TEXTS]
    body = v2(client, texts=None, inputs=inputs)
    assert body["texts"] == TEXTS
    assert body["embeddings"]["float"] == v2(client)["embeddings"]["float"]


# ---- values: parity with sentence-transformers' quantize_embeddings ---------------------


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_scalar_types_equal_sentence_transformers_with_the_calibrated_ranges(client, kind):
    body = v2(client, input_type="search_query", embedding_types=["float", kind])
    floats = np.array(body["embeddings"]["float"], dtype=np.float32)
    ranges = reference_ranges(client)
    reference = quantize_embeddings(floats, precision=kind, ranges=ranges)
    np.testing.assert_array_equal(np.array(body["embeddings"][kind]), reference)
    model = client.app.state.service.pool.get(None)
    np.testing.assert_array_equal(CALIBRATIONS.cached(model, None), ranges)


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_packed_types_equal_sentence_transformers(client, kind):
    body = v2(client, embedding_types=["float", kind])
    floats = np.array(body["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_array_equal(np.array(body["embeddings"][kind]), quantize_embeddings(floats, precision=kind))


def test_base64_is_the_float32_bytes(client):
    body = v2(client, embedding_types=["float", "base64"])
    decoded = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in body["embeddings"]["base64"]]
    np.testing.assert_array_equal(np.array(decoded), np.array(body["embeddings"]["float"], dtype=np.float32))


def test_output_dimension_cuts_renormalises_and_calibrates_on_the_cut(client, fake_backend):
    body = v2(client, output_dimension=4, embedding_types=["float", "int8"])
    floats = np.array(body["embeddings"]["float"], dtype=np.float32)
    for text, vector in zip(TEXTS, floats, strict=True):
        np.testing.assert_allclose(vector, expected(fake_backend, text, dims=4), rtol=1e-5, atol=1e-6)
    ranges = reference_ranges(client, dimensions=4)
    np.testing.assert_array_equal(np.array(body["embeddings"]["int8"]), quantize_embeddings(floats, "int8", ranges=ranges))
    model = client.app.state.service.pool.get(None)
    assert CALIBRATIONS.cached(model, 4) is not None and CALIBRATIONS.cached(model, 4).shape == (2, 4)


def test_a_model_is_calibrated_once_and_again_after_a_reload(client, fake_backend):
    calibration = len(calibration_texts())
    before = rows_embedded(fake_backend)
    v2(client, embedding_types=["int8"])
    assert rows_embedded(fake_backend) - before == len(TEXTS) + calibration
    before = rows_embedded(fake_backend)
    v2(client, embedding_types=["uint8", "int8"], input_type="search_query")
    assert rows_embedded(fake_backend) - before == len(TEXTS)  # the ranges are kept
    v2(client, embedding_types=["float", "binary"])
    assert rows_embedded(fake_backend) - before == 2 * len(TEXTS)  # no ranges needed
    assert client.post("/model/unload", params={"model_name": "org/fake-model"}).status_code == 200
    assert client.post("/model/load", params={"model_name": "org/fake-model"}).status_code == 200
    before = rows_embedded(fake_backend)
    v2(client, embedding_types=["int8"])
    assert rows_embedded(fake_backend) - before == len(TEXTS) + calibration  # a new model, calibrated afresh


# ---- input_type -> the model's prompts ----------------------------------------------------


@pytest.mark.parametrize(
    ("input_type", "openai_body"),
    [("search_query", {"input_type": "query"}), ("search_document", {"input_type": "document"}), ("clustering", {})],
)
def test_input_type_maps_onto_the_models_prefixes(prompted, input_type, openai_body):
    client, _ = prompted
    floats = np.array(v2(client, input_type=input_type)["embeddings"]["float"], dtype=np.float32)
    np.testing.assert_array_equal(floats, openai_vectors(client, TEXTS, **openai_body))


def test_classification_uses_the_models_own_prompt(prompted):
    client, backend = prompted
    floats = np.array(v2(client, input_type="classification")["embeddings"]["float"])
    for text, vector in zip(TEXTS, floats, strict=True):
        np.testing.assert_allclose(vector, expected(backend, "c: " + text), rtol=1e-5, atol=1e-6)


def test_v1_without_input_type_uses_no_prefix(prompted):
    client, _ = prompted
    body = client.post("/v1/embed", json={"texts": TEXTS}).json()
    np.testing.assert_array_equal(np.array(body["embeddings"], dtype=np.float32), openai_vectors(client, TEXTS))


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input_type": "image"}, "input_type", "text only"),
        ({"images": ["data:image/png;base64,AAAA"]}, "images", "text only"),
        ({"truncate": "START"}, "truncate", "'END' and 'NONE'"),
        ({"texts": ["x"] * 97}, "texts", "96"),
        ({"texts": []}, "texts", "at least 1"),
        ({"texts": ["ok", ""]}, "texts[1]", "at least 1"),
        ({"texts": None}, None, "'texts' is required"),
        ({"input_type": ...}, "input_type", "required"),  # ...: left out
        ({"embedding_types": ["int4"]}, "embedding_types[0]", "int8"),
        ({"inputs": [{"content": [{"type": "text", "text": "x"}]}]}, None, "not both"),
        ({"texts": None, "inputs": [{"content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "inputs[0]", "text only"),
        ({"texts": None, "inputs": [{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, "inputs[0]", "one text part"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client, body, param, words):
    sent = {key: value for key, value in {"input_type": "search_document", "texts": TEXTS, **body}.items() if value is not ...}
    error = assert_openai_error(client.post("/v2/embed", json=sent), 422, param=param)
    assert words in error["message"], error["message"]


def test_v1_refuses_images_and_start(client):
    assert_openai_error(client.post("/v1/embed", json={"texts": TEXTS, "input_type": "image"}), 422, param="input_type")
    assert_openai_error(client.post("/v1/embed", json={"texts": TEXTS, "truncate": "START"}), 422, param="truncate")


def test_truncate_none_refuses_a_long_text_and_end_cuts_it(client):
    long = " ".join(f"w{i}" for i in range(40))  # the fake model takes 16 tokens
    refused = v2_raw(client, texts=["ok", long], truncate="NONE")
    error = assert_openai_error(refused, 422, param="texts[1]")
    assert "texts[1]" in error["message"] and "truncation is off" in error["message"]
    assert v2(client, texts=["ok", long], truncate="END")["meta"]["billed_units"]["input_tokens"] == 3 + 16


def test_output_dimension_above_the_model_is_400_naming_it(client):
    error = assert_openai_error(v2_raw(client, output_dimension=9), 400, param="output_dimension")
    assert "output_dimension must be between 1 and 8" in error["message"]


def test_binary_needs_a_dimension_divisible_by_8(client, make_client):
    error = assert_openai_error(v2_raw(client, output_dimension=4, embedding_types=["binary"]), 400, param="output_dimension")
    assert "multiple of 8" in error["message"]
    odd = make_client(backend=FakeBackend(dimension=12))
    error = assert_openai_error(v2_raw(odd, embedding_types=["float", "ubinary"]), 400, param="embedding_types")
    assert "12" in error["message"]
    assert v2(odd, embedding_types=["int8"])["embeddings"]["int8"]  # unpacked types are fine


def test_an_unknown_model_is_404(client):
    assert_openai_error(v2_raw(client, model="missing-embed-v4.0"), 404)


def v2_raw(client, **body):
    return client.post("/v2/embed", json={"input_type": "search_document", "texts": TEXTS, **body})

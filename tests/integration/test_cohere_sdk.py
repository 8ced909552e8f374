"""Cohere's embed API on the real server and the real model, called with the real `cohere` SDK.

`cohere.ClientV2(base_url=URL).embed` posts to `URL/v2/embed`, `cohere.Client(base_url=URL).embed`
to `URL/v1/embed` (the SDK adds the version path itself), and each parses our answer into its
own response types (v1 by `response_type`). The float vectors must be exactly what
/v1/embeddings gives for the same texts and prefix; int8 and ubinary exactly sentence-
transformers' `quantize_embeddings` of them, int8 with the ranges of the server's calibration
texts embedded as documents.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from embedserve.backends.fidelity import calibration_texts

from .conftest import MODEL

cohere = pytest.importorskip("cohere")

pytestmark = pytest.mark.integration

TEXTS = ["What is hybrid search?", "A man is playing a guitar.", "The cat sleeps on the mat."]


def openai_vectors(server, texts: list[str], **body) -> np.ndarray:
    r = httpx.post(server.url + "/v1/embeddings", json={"input": texts, "model": MODEL, **body}, timeout=120)
    assert r.status_code == 200, r.text
    return np.array([item["embedding"] for item in r.json()["data"]], dtype=np.float32)


def test_client_v2_embed_by_type(server):
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    response = client.embed(
        texts=TEXTS, model=MODEL, input_type="search_query", embedding_types=["float", "int8", "ubinary"]
    )
    assert response.texts == TEXTS
    assert response.meta.api_version.version == "2" and response.meta.billed_units.input_tokens > 0
    floats = np.array(response.embeddings.float_, dtype=np.float32)
    assert floats.shape == (len(TEXTS), 384)
    np.testing.assert_array_equal(floats, openai_vectors(server, TEXTS, input_type="query"))
    calibration = openai_vectors(server, calibration_texts(), input_type="document")
    ranges = np.vstack((calibration.min(axis=0), calibration.max(axis=0)))
    np.testing.assert_array_equal(np.array(response.embeddings.int8), quantize_embeddings(floats, "int8", ranges=ranges))
    np.testing.assert_array_equal(np.array(response.embeddings.ubinary), quantize_embeddings(floats, "ubinary"))
    assert response.embeddings.uint8 is None and response.embeddings.base64 is None


def test_client_v2_output_dimension(server):
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    response = client.embed(texts=TEXTS, model=MODEL, input_type="search_document", output_dimension=128)
    floats = np.array(response.embeddings.float_, dtype=np.float32)
    np.testing.assert_array_equal(floats, openai_vectors(server, TEXTS, input_type="document", dimensions=128))


def test_client_v1_embed_floats_and_by_type(server):
    client = cohere.Client(api_key="x", base_url=server.url)
    floats = client.embed(texts=TEXTS, model=MODEL, input_type="search_document")
    assert floats.response_type == "embeddings_floats" and floats.texts == TEXTS
    np.testing.assert_array_equal(
        np.array(floats.embeddings, dtype=np.float32), openai_vectors(server, TEXTS, input_type="document")
    )
    by_type = client.embed(texts=TEXTS, model=MODEL, input_type="search_document", embedding_types=["float", "binary"])
    assert by_type.response_type == "embeddings_by_type"
    got = np.array(by_type.embeddings.float_, dtype=np.float32)
    np.testing.assert_array_equal(got, np.array(floats.embeddings, dtype=np.float32))
    np.testing.assert_array_equal(np.array(by_type.embeddings.binary), quantize_embeddings(got, "binary"))


def test_sdk_errors_for_what_is_not_served(server):
    client = cohere.ClientV2(api_key="x", base_url=server.url)
    with pytest.raises(cohere.UnprocessableEntityError) as raised:
        client.embed(texts=TEXTS, model=MODEL, input_type="search_query", truncate="START")
    assert "END" in raised.value.body["error"]["message"]

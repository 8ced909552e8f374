"""The real server on the real default model, checked against SentenceTransformer.encode."""

from __future__ import annotations

import base64
import concurrent.futures as cf

import httpx
import numpy as np
import openai
import pytest

from .conftest import MODEL, SENTENCES, cosines

pytestmark = pytest.mark.integration


def test_vectors_match_sentence_transformers(server, reference_model):
    response = httpx.post(server.url + "/v1/embeddings", json={"input": SENTENCES, "model": "all-MiniLM-L6-v2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert got.shape == (len(SENTENCES), 384)
    assert [item["index"] for item in body["data"]] == list(range(len(SENTENCES)))
    expected = reference_model.encode(SENTENCES)
    assert cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    tokens = sum(len(ids) for ids in reference_model.tokenizer(SENTENCES)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


SHORT = ["?", "ok", "a", "No.", "ok thanks", "Paris", "42", "hi there", "\u00e9t\u00e9", "\U0001F600", "x" * 300]


def test_every_default_vector_on_the_sts_sentences_is_within_0_9999(server, reference_model, sts):
    # issue 4's bar for the default mode, over ~2,550 real sentences plus very short inputs
    # (where a reduced-precision mode moves vectors most), sent in requests of 64
    texts = list(dict.fromkeys(sts.texts + SHORT))
    got = []
    for start in range(0, len(texts), 64):
        response = httpx.post(server.url + "/v1/embeddings", json={"input": texts[start : start + 64]}, timeout=60)
        assert response.status_code == 200, response.text
        got += [item["embedding"] for item in response.json()["data"]]
    similarity = cosines(np.asarray(got, dtype=np.float32), reference_model.encode(texts, batch_size=64))
    assert len(similarity) > 2500  # 2,552 distinct STS-B test sentences and the short ones
    assert similarity.min() >= 0.9999, (similarity.min(), texts[int(similarity.argmin())])


def test_concurrent_clients_each_get_their_own_vector(server, reference_model):
    expected = reference_model.encode(SENTENCES)

    def one(i: int):
        r = httpx.post(server.url + "/v1/embeddings", json={"input": SENTENCES[i % len(SENTENCES)]}, timeout=60)
        assert r.status_code == 200, r.text
        return i, np.array(r.json()["data"][0]["embedding"], dtype=np.float32)

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(48)))
    for i, vector in results:
        assert cosines(vector[None], expected[i % len(SENTENCES)][None])[0] >= 0.9999


def test_long_input_is_truncated_like_sentence_transformers(server, reference_model):
    text = " ".join(["embedding"] * 600)
    r = httpx.post(server.url + "/v1/embeddings", json={"input": text})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 256
    got = np.array([r.json()["data"][0]["embedding"]], dtype=np.float32)
    assert cosines(got, reference_model.encode([text]))[0] >= 0.9999


def test_token_id_input_equals_text_input(server, reference_model):
    ids = reference_model.tokenizer("A man is playing a guitar.", add_special_tokens=False)["input_ids"]
    by_ids = httpx.post(server.url + "/v1/embeddings", json={"input": [ids]}).json()
    by_text = httpx.post(server.url + "/v1/embeddings", json={"input": "A man is playing a guitar."}).json()
    a = np.array([by_ids["data"][0]["embedding"]], dtype=np.float32)
    b = np.array([by_text["data"][0]["embedding"]], dtype=np.float32)
    assert cosines(a, b)[0] >= 0.99999


def test_base64_and_dimensions(server, reference_model):
    r = httpx.post(
        server.url + "/v1/embeddings", json={"input": SENTENCES[:2], "encoding_format": "base64", "dimensions": 128}
    )
    assert r.status_code == 200, r.text
    vectors = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    assert vectors.shape == (2, 128)
    expected = reference_model.encode(SENTENCES[:2])[:, :128]
    assert cosines(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_openai_client(server, reference_model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    response = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=SENTENCES)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == (len(SENTENCES), 384)
    assert cosines(got, reference_model.encode(SENTENCES)).min() >= 0.9999
    assert response.usage.prompt_tokens > 0
    models = client.models.list()
    assert MODEL in [m.id for m in models.data]
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="acme/no-such-model", input="hi")
    assert "acme/no-such-model" in str(info.value)
    # OpenAI's own model names reach the default model (--model-alias), so its clients' defaults work
    aliased = client.embeddings.create(model="text-embedding-3-small", input=SENTENCES[:1])
    assert aliased.model == "text-embedding-3-small"
    assert cosines(np.array([aliased.data[0].embedding]), got[:1]).min() >= 0.9999
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(model=MODEL, input=[])


def test_bad_inputs_never_500(server):
    bodies = [b"", b"{", b"[]", b'{"input": null}', b'{"input": [""]}', b'{"input": [[]]}',
              b'{"input": [1.5]}', b'{"input": "x", "dimensions": -1}', b'{"input": [[999999999]]}']
    for body in bodies:
        r = httpx.post(server.url + "/v1/embeddings", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_embedding_service_rerank_ranks_the_relevant_candidate_first(server):
    """Its README's request, on the real default model (cosine of the query's and candidates' vectors)."""
    body = {
        "query": "What is hybrid search?",
        "candidates": [
            "Hybrid search combines dense and sparse vectors.",
            "ColBERT uses late interaction for better precision.",
            "Unrelated text about cooking.",
        ],
        "batch_size": 12,
    }
    r = httpx.post(server.url + "/rerank", json=body, timeout=30)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    assert len(scores) == 3 and scores[0] == max(scores) and scores[0] > scores[2]

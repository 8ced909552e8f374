"""Clients of OpenAI-compatible servers, unmodified, with their defaults, against the real server
on the default model: LangChain's OpenAIEmbeddings (tiktoken ids, `text-embedding-ada-002`) and
Infinity's own client (`/embeddings` without `/v1`, `dimensions: 0`, `default/not-specified`,
`GET /models`, `/rerank`)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def offline_tiktoken(tmp_path, monkeypatch):
    """LangChain's client loads cl100k_base from OpenAI's blob store; offline, put the same file (tiktoken
    checks its sha256) where tiktoken's cache looks, as a machine that had downloaded it once would have."""
    import tiktoken_ext

    bundled = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copy(bundled, tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def _plain(server, texts: list[str]) -> np.ndarray:
    vectors = []
    for start in range(0, len(texts), 1000):
        r = httpx.post(server.url + "/v1/embeddings", json={"input": texts[start:start + 1000]}, timeout=120)
        assert r.status_code == 200, r.text
        vectors += [d["embedding"] for d in r.json()["data"]]
    return np.array(vectors)


def test_langchain_openai_embeddings_with_its_defaults_matches_the_plain_text(server, sts, offline_tiktoken):
    from langchain_openai import OpenAIEmbeddings

    client = OpenAIEmbeddings(base_url=server.url + "/v1", api_key="unused")  # model text-embedding-ada-002
    assert client.check_embedding_ctx_length  # the default: it sends tiktoken ids, not text
    texts = sts.texts
    got = np.array(client.embed_documents(texts))
    want = _plain(server, texts)
    cosines = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert len(texts) > 2500 and cosines.min() >= 0.999, (cosines.min(), texts[int(cosines.argmin())])
    query = np.array(client.embed_query("A man is playing a guitar."))
    np.testing.assert_allclose(query, _plain(server, ["A man is playing a guitar."])[0], atol=1e-5)


def test_infinity_client_embeds_lists_models_and_reranks(server):
    from infinity_client import Client
    from infinity_client.api.default import embeddings, models, rerank
    from infinity_client.models import OpenAIEmbeddingInputText, RerankInput

    client = Client(base_url=server.url)
    listed = models.sync(client=client)
    assert [m.id for m in listed.data] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert "embed" in listed.data[0].capabilities

    texts = ["Paris is the capital of France.", "The cat sat on the mat."]
    answer = embeddings.sync(client=client, body=OpenAIEmbeddingInputText(input_=texts, dimensions=0))
    got = np.array([d.embedding for d in answer.data])
    np.testing.assert_allclose(got, _plain(server, texts), atol=1e-6)
    assert answer.model == "default/not-specified"  # the client's default name, answered as asked

    ranked = rerank.sync(client=client, body=RerankInput.from_dict(
        {"query": "What is the capital of France?", "documents": texts, "return_documents": True}
    ))
    assert [r.index for r in ranked.results] == [0, 1]  # the relevant document first, by cosine on real weights
    assert ranked.results[0].document == texts[0]

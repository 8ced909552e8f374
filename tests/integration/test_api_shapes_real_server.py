"""Every peer API's request shape, sent as its API documents it, to one real server process:
`embedserve serve` with the default model plus a scoring model (a tiny random cross-encoder built
here, loaded through the real loading code). Each answer must have that API's shape; the numbers
themselves are checked against references in the per-API tests (test_rerank_cross_encoder.py,
test_tei_*.py, test_cohere_sdk.py, test_openai_compatible_clients.py)."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import MODEL, start_server, stop_server
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model

pytestmark = pytest.mark.integration

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "The cat sat on the mat.", "Berlin is in Germany."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=64, max_position_embeddings=64)
    reranker = convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    server = start_server(root, "--model", MODEL, "--model", str(reranker), "--threads", "2")
    try:
        yield server.url, str(reranker)
    finally:
        stop_server(server)


def post(url: str, path: str, body) -> httpx.Response:
    r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == 200, (path, r.text)
    return r


def test_rerank_shapes_with_the_scoring_model(served):
    url, reranker = served
    tei = post(url, "/rerank", {"query": QUERY, "texts": DOCS, "return_text": True, "model": reranker}).json()
    assert sorted(r["index"] for r in tei) == [0, 1, 2] and all({"index", "score", "text"} == set(r) for r in tei)
    inf = post(url, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": True, "model": reranker}).json()
    assert inf["object"] == "rerank" and len(inf["results"]) == 2 and isinstance(inf["results"][0]["document"], str)
    assert {"model", "usage", "id", "created"} <= set(inf)
    jina = post(url, "/v1/rerank", {"query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}], "model": reranker}).json()
    assert {"id", "model", "results", "usage"} <= set(jina) and jina["results"][0]["document"]["text"] in DOCS
    cohere = post(url, "/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1, "model": reranker}).json()
    assert set(cohere) == {"id", "results", "meta"} and set(cohere["results"][0]) == {"index", "relevance_score"}
    vllm = post(url, "/score", {"model": reranker, "queries": QUERY, "documents": DOCS}).json()
    assert vllm["object"] == "list" and [d["index"] for d in vllm["data"]] == [0, 1, 2]
    predicted = post(url, "/predict", {"inputs": [QUERY, DOCS[0]], "model": reranker}).json()
    assert set(predicted[0]) == {"score", "label"}


def test_the_embedding_services_rerank_ranks_relevant_first_on_real_weights(served):
    url, _ = served
    scores = post(url, "/rerank", {"query": QUERY, "candidates": DOCS}).json()["scores"]
    assert scores[0] > scores[1]  # cosine of all-MiniLM-L6-v2's vectors: Paris above the cat


def test_tei_shapes(served):
    url, _ = served
    assert len(post(url, "/embed", {"inputs": "hello", "normalize": False}).json()) == 1
    assert len(post(url, "/", {"inputs": ["a", "b"], "truncate": True}).json()) == 2
    assert len(post(url, "/similarity", {"inputs": {"source_sentence": QUERY, "sentences": DOCS}}).json()) == 3
    tokens = post(url, "/tokenize", {"inputs": "hello world"}).json()
    assert {"id", "text", "special", "start", "stop"} == set(tokens[0][0])
    ids = [t["id"] for t in tokens[0]]
    assert post(url, "/decode", {"ids": ids}).json() == ["hello world"]
    info = httpx.get(url + "/info", timeout=10).json()
    assert info["model_id"] == MODEL and "embedding" in info["model_type"]
    error = httpx.post(url + "/embed", json={"inputs": []}, timeout=10)
    assert error.status_code == 422 and set(error.json()) == {"error", "error_type"}


def test_infinity_and_openai_shapes(served):
    url, _ = served
    answer = post(url, "/embeddings", {"input": ["hello"], "model": "default/not-specified", "dimensions": 0}).json()
    assert answer["object"] == "list" and answer["id"].startswith("infinity-") and len(answer["data"][0]["embedding"]) == 384
    generator = post(url, "/embeddings", {"texts": ["hello"]}).json()
    assert generator["dimensions"] == 384
    models = httpx.get(url + "/models", timeout=10).json()
    assert [m["id"] for m in models["data"]][0] == MODEL
    ada = post(url, "/v1/embeddings", {"input": "hello", "model": "text-embedding-ada-002"}).json()
    assert ada["model"] == "text-embedding-ada-002"


def test_cohere_embed_shapes(served):
    url, _ = served
    v2 = post(url, "/v2/embed", {"texts": ["hello"], "input_type": "search_query", "embedding_types": ["float", "ubinary"]}).json()
    assert v2["response_type"] == "embeddings_by_type" and len(v2["embeddings"]["ubinary"][0]) == 384 // 8
    v1 = post(url, "/v1/embed", {"texts": ["hello"], "input_type": "search_document"}).json()
    assert v1["response_type"] == "embeddings_floats" and len(v1["embeddings"][0]) == 384

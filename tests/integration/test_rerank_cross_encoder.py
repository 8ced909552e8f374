"""Reranking through the shared engine: cross-encoders against CrossEncoder.predict, dense models by cosine.

Tiny random BERT cross-encoders (one label, three labels) are saved by transformers itself, loaded
through the real loading code and served in-process; TEI's and Infinity's /rerank shapes must give
`CrossEncoder.predict`'s scores (sigmoid, or raw logits with `raw_scores`) to 1e-5, best first. A
dense embedder reranks by the cosine of sentence-transformers' own vectors (a numpy reference).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model, build_generic

pytestmark = pytest.mark.integration

QUERY = "what is the quick brown fox"
DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "a cat", "red car on the road", "the fox", "hello world"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank")
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=24, max_position_embeddings=24)
    one = convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    three = convert(base, root / "acme--nli", "AutoModelForSequenceClassification", num_labels=3)
    dense = build_generic(root)
    # The routes on the exact torch path: auto would run these on ONNX Runtime, whose fp32 sums in another
    # order move this tiny model's raw logits (weights at 0.5) by up to ~1.5e-5 (its 1e-5 parity, at
    # realistic scale, is tests/integration/test_onnx_cross_encoder.py's).
    settings = Settings(models=(str(one), str(three), str(dense)), device="cpu", threads=2, cache_dir=root / "cache",
                        load_on_demand=False, backend="torch")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, {"one": one, "three": three, "dense": dense}


def predict(folder, pairs, raw=False):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return model.predict(pairs, activation_fn=torch.nn.Identity() if raw else None)


@pytest.mark.parametrize("raw", [False, True])
def test_tei_rerank_equals_cross_encoder_predict(served, raw):
    client, folders = served
    body = {"query": QUERY, "texts": DOCUMENTS, "raw_scores": raw, "return_text": True, "model": str(folders["one"])}
    r = client.post("/rerank", json=body)
    assert r.status_code == 200, r.text
    ranks = r.json()
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS], raw=raw)
    assert [rank["index"] for rank in ranks] == np.argsort(-expected, kind="stable").tolist()
    for rank in ranks:
        assert abs(rank["score"] - expected[rank["index"]]) <= TOLERANCE
        assert rank["text"] == DOCUMENTS[rank["index"]]
    if not raw:
        assert all(0 < rank["score"] < 1 for rank in ranks)  # the model's sigmoid


def test_infinity_rerank_with_top_n_and_documents(served):
    client, folders = served
    body = {"query": QUERY, "documents": DOCUMENTS, "top_n": 2, "return_documents": True, "model": str(folders["one"])}
    r = client.post("/rerank", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "rerank" and answer["id"].startswith("rerank-") and answer["usage"]["total_tokens"] > 0
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS])
    best = np.argsort(-expected, kind="stable")[:2].tolist()
    assert [item["index"] for item in answer["results"]] == best
    for item in answer["results"]:
        assert abs(item["relevance_score"] - expected[item["index"]]) <= TOLERANCE
        assert item["document"] == DOCUMENTS[item["index"]]


def test_a_long_document_is_cut_never_the_query(served):
    client, folders = served
    model = client.app.state.service.pool.get(str(folders["one"]))
    backend = model.worker.backend
    long = " ".join(["river mountain city"] * 20)
    (ids,), types = backend.tokenize_pairs([(QUERY, long)], truncate=True)
    query_ids = backend.tokenize([QUERY], truncate=True)[0]
    assert len(ids) == backend.info.max_seq_length == 24
    assert ids[: len(query_ids)] == query_ids  # [CLS] query [SEP] intact, then the document's start
    assert types[0][: len(query_ids)] == [0] * len(query_ids) and set(types[0][len(query_ids):]) == {1}
    r = client.post("/rerank", json={"query": QUERY, "texts": [long, "a cat"], "model": str(folders["one"])})
    assert r.status_code == 200


def test_a_dense_model_reranks_by_cosine(served):
    from sentence_transformers import SentenceTransformer

    client, folders = served
    r = client.post("/rerank", json={"query": QUERY, "candidates": DOCUMENTS, "batch_size": 12, "model": str(folders["dense"])})
    assert r.status_code == 200, r.text
    model = SentenceTransformer(str(folders["dense"]), device="cpu")
    q, d = model.encode([QUERY]), model.encode(DOCUMENTS)
    q, d = q / np.linalg.norm(q, axis=1, keepdims=True), d / np.linalg.norm(d, axis=1, keepdims=True)
    assert np.allclose(r.json()["scores"], d @ q[0], atol=TOLERANCE)  # in the candidates' order


def test_refusals(served):
    client, folders = served
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "model": str(folders["three"])})
    assert r.status_code == 400 and "scores 3 labels" in r.json()["error"]  # TEI's body: TEI's error shape
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "documents": DOCUMENTS})
    message = r.json()["error"]["message"]
    assert r.status_code == 422 and all(f"'{key}'" in message for key in ("candidates", "texts", "documents"))
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 9, "model": str(folders["one"])})
    assert r.status_code == 422 and r.json()["error"]["param"] == "top_n"
    r = client.post("/rerank", json={"query": QUERY, "texts": ["ok", ""], "model": str(folders["one"])})
    assert r.status_code == 422 and r.json()["error"].startswith("'texts[1]'") and r.json()["error_type"] == "Validation"
    r = client.post("/rerank", json={"query": "", "texts": ["ok"], "model": str(folders["one"])})
    assert r.status_code == 422 and r.json()["error"].startswith("'query'")


def test_jina_and_cohere_v1_rerank(served):
    client, folders = served
    documents = [DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]]
    body = {"model": str(folders["one"]), "query": QUERY, "documents": documents, "top_n": 2}
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS[:3]])
    assert [item["index"] for item in answer["results"]] == np.argsort(-expected, kind="stable")[:2].tolist()
    for item in answer["results"]:
        assert abs(item["relevance_score"] - expected[item["index"]]) <= TOLERANCE
        assert item["document"] == {"text": DOCUMENTS[item["index"]]}  # Jina's default: documents returned
    assert answer["usage"]["total_tokens"] > 0 and answer["model"] == str(folders["one"])
    bare = client.post("/v1/rerank", json={**body, "return_documents": False}).json()
    assert all("document" not in item for item in bare["results"])


def test_cohere_v2_rerank(served):
    client, folders = served
    body = {"model": str(folders["one"]), "query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 4096}
    r = client.post("/v2/rerank", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"id", "results", "meta"} and answer["meta"]["api_version"] == {"version": "2"}
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS])
    assert [item["index"] for item in answer["results"]] == np.argsort(-expected, kind="stable").tolist()
    assert all(set(item) == {"index", "relevance_score"} for item in answer["results"])
    r = client.post("/v2/rerank", json={**body, "top_n": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "top_n"


def test_vllm_score_pairs_equal_cross_encoder_predict(served):
    client, folders = served
    model = str(folders["one"])
    r = client.post("/score", json={"model": model, "queries": QUERY, "documents": DOCUMENTS})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["object"] == "list" and answer["model"] == model and answer["id"].startswith("score-")
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS])
    assert [item["index"] for item in answer["data"]] == list(range(len(DOCUMENTS)))  # input order, not ranked
    assert np.allclose([item["score"] for item in answer["data"]], expected, atol=TOLERANCE)
    queries = [QUERY, "red things", QUERY]
    zipped = client.post("/v1/score", json={"model": model, "text_1": queries, "text_2": DOCUMENTS[:3]}).json()
    expected = predict(folders["one"], list(zip(queries, DOCUMENTS[:3], strict=True)))
    assert np.allclose([item["score"] for item in zipped["data"]], expected, atol=TOLERANCE)

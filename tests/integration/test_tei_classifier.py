"""TEI's classifier and reranker routes on tiny random cross-encoders, against transformers itself.

A three-label classifier (named labels) and a one-label reranker are saved by transformers, loaded
through the real loading code and served in-process: /predict (and POST / for a classifier) must
give `AutoModelForSequenceClassification`'s softmax over the labels, every label best first, a
single text tokenized alone and a pair as the tokenizer joins it. LlamaIndex's TEI reranker
(`llama-index-postprocessor-tei-rerank`) runs against a real server process whose default model is
the reranker, and must order nodes as `CrossEncoder.predict` scores them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.integration.conftest import start_server, stop_server
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model

pytestmark = pytest.mark.integration

LABELS = {0: "contradiction", 1: "entailment", 2: "neutral"}
TEXT = "the quick brown fox jumps over the lazy dog"
PAIR = ("a fox", "the quick brown fox")
QUERY = "what is the quick brown fox"
DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "a cat", "red car on the road", "the fox"]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tei-classifier")
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=24, max_position_embeddings=24)
    nli = convert(base, root / "acme--nli", "AutoModelForSequenceClassification", num_labels=3, id2label=LABELS,
                  label2id={v: k for k, v in LABELS.items()})
    reranker = convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    return {"nli": nli, "reranker": reranker, "root": root}


@pytest.fixture(scope="module")
def client(folders):
    # backend torch: auto runs cross-encoders on ONNX Runtime, whose fp32 sums in another order move
    # these tiny models' raw logits (weights at 0.5) by up to ~1.6e-5 (test_onnx_cross_encoder.py).
    settings = Settings(models=(str(folders["nli"]), str(folders["reranker"])), device="cpu", threads=2,
                        cache_dir=folders["root"] / "cache", load_on_demand=False, backend="torch")
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def reference(folder, *texts: str) -> np.ndarray:
    """transformers' logits for one sequence (a text, or a pair)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        return model(**tokenizer(*texts, return_tensors="pt")).logits[0].double().numpy()


def as_scores(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


def test_predict_is_transformers_softmax_for_a_text_and_a_pair(client, folders):
    for texts in ((TEXT,), PAIR):
        logits = reference(folders["nli"], *texts)
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        body = {"inputs": texts[0] if len(texts) == 1 else list(texts)}
        r = client.post("/predict", json=body)  # the default model: the classifier
        assert r.status_code == 200, r.text
        got = r.json()
        assert [p["label"] for p in got] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]
        assert all(abs(as_scores(got)[LABELS[i]] - expected[i]) <= TOLERANCE for i in LABELS)
        raw = as_scores(client.post("/predict", json={**body, "raw_scores": True}).json())
        assert all(abs(raw[LABELS[i]] - logits[i]) <= TOLERANCE for i in LABELS)
        assert client.post("/", json=body).json() == got  # TEI's root route classifies with a classifier


def test_predict_a_batch_matches_each_alone(client):
    alone = [client.post("/predict", json={"inputs": inputs}).json() for inputs in (TEXT, list(PAIR))]
    batch = client.post("/predict", json={"inputs": [[TEXT], list(PAIR)]}).json()
    for one, other in zip(batch, alone):
        assert [p["label"] for p in one] == [p["label"] for p in other]
        assert all(abs(a["score"] - b["score"]) <= TOLERANCE for a, b in zip(one, other))


def test_a_reranker_at_the_root_reranks_and_predicts_with_a_sigmoid(client, folders):
    from sentence_transformers import CrossEncoder

    model = str(folders["reranker"])
    expected = CrossEncoder(model, device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    r = client.post("/", json={"query": QUERY, "texts": DOCUMENTS, "model": model})
    assert r.status_code == 200, r.text
    assert [rank["index"] for rank in r.json()] == np.argsort(-expected, kind="stable").tolist()
    assert all(abs(rank["score"] - expected[rank["index"]]) <= TOLERANCE for rank in r.json())
    (only,) = client.post("/predict", json={"inputs": [QUERY, DOCUMENTS[0]], "model": model}).json()
    assert only["label"] == "LABEL_0" and abs(only["score"] - expected[0]) <= TOLERANCE


def test_info_names_the_labels(client):
    model_type = client.get("/info").json()["model_type"]
    assert model_type == {"classifier": {"id2label": {str(k): v for k, v in LABELS.items()},
                                         "label2id": {v: k for k, v in LABELS.items()}}}


def test_llama_index_tei_reranker(folders, tmp_path):
    pytest.importorskip("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(folders["reranker"]), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    server = start_server(tmp_path, "--model", str(folders["reranker"]), "--threads", "2", "--backend", "torch")
    try:
        reranker = TextEmbeddingInference(base_url=server.url, top_n=2)  # POST {base_url}/rerank {query, texts}
        nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in DOCUMENTS]
        best = reranker.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    finally:
        stop_server(server)
    order = np.argsort(-expected, kind="stable")[:2]
    assert [n.node.text for n in best] == [DOCUMENTS[i] for i in order]
    assert all(abs(n.score - expected[i]) <= TOLERANCE for n, i in zip(best, order))

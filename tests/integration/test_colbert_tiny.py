"""ColBERT-style models (a sentence-transformers MultiVectorEncoder folder, PyLate's layout) served vs the library.

Tiny random BERTs with a projection, `[Q]`/`[D]` markers, query expansion and a punctuation
skiplist are saved by sentence-transformers' own code (tests/support/tiny_colbert.py) in several
configurations, loaded through the real loading code, and served. Every input's per-token
vectors must equal `MultiVectorEncoder.encode_query` / `encode_document` (same rows, values to
1e-5), with queries and documents of different lengths sharing the server's batches.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_colbert import DOCUMENT_LENGTH, QUERY_LENGTH, build_colbert

pytestmark = pytest.mark.integration

TEXTS = [
    "hello world",
    "what is the quick brown fox?",
    "the cat, the dog; and the bird!",  # punctuation: skipped on the document side
    "a",
    " ".join(["river mountain city house car road"] * 5),  # past both lengths
    "[MASK] [Q] red car",  # the markers and the expansion token as text
    "!?.,",
]
TOLERANCE = 1e-5
VARIANTS = {
    "fixed": {},
    "fixed-attended": {"attend_to_expansion": True},
    "min": {"expansion_strategy": "min"},
    "no-skiplist": {"skiplist_words": []},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("colbert")
    folders = {name: build_colbert(root, f"acme--colbert-{name}", seed=i, **options)
               for i, (name, options) in enumerate(VARIANTS.items())}
    settings = Settings(models=tuple(str(f) for f in folders.values()), device="cpu", threads=2, backend="torch",
                        dtype="fp32", cache_dir=root / "cache", load_on_demand=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, folders


def reference(folder, texts, role):
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(folder), device="cpu")
    encode = model.encode_query if role == "query" else model.encode_document
    return [np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.float32) for v in encode(texts)]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        a = np.asarray(a, dtype=np.float32)
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert np.allclose(a, b, atol=TOLERANCE), i


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("role", ["query", "document"])
def test_served_vectors_equal_multivector_encoder(served, variant, role):
    client, folders = served
    folder = folders[variant]
    body = {"model": str(folder), "input": TEXTS, "input_type": role, "outputs": ["multivector"]}
    r = client.post("/v1/encodings", json=body)
    assert r.status_code == 200, r.text
    got = [item["multivector"] for item in r.json()["data"]]
    expected = reference(folder, TEXTS, role)
    assert_same(got, expected)
    if role == "query":  # expansion: every query that fits gets the full width, attended or not
        assert all(len(v) >= QUERY_LENGTH for v in got[:4])
    else:
        assert max(len(v) for v in got) <= DOCUMENT_LENGTH


def test_queries_and_documents_share_batches_and_stay_apart(served):
    """Requests of both roles at once: each gets its own role's vectors, whatever batch it was in."""
    import concurrent.futures

    client, folders = served
    folder = folders["fixed"]

    def ask(role, text):
        body = {"model": str(folder), "input": [text], "input_type": role}
        return client.post("/v1/encodings", json=body).json()["data"][0]["multivector"]

    asks = [(role, text) for text in TEXTS for role in ("query", "document")]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda a: ask(*a), asks))
    queries, documents = reference(folder, TEXTS, "query"), reference(folder, TEXTS, "document")
    for (role, text), got in zip(asks, results, strict=True):
        expected = (queries if role == "query" else documents)[TEXTS.index(text)]
        assert_same([got], [expected])


def test_tei_embed_all_encodes_documents(served):
    client, folders = served
    folder = folders["fixed"]
    r = client.post("/embed_all", json={"inputs": TEXTS[:3], "model": str(folder)})
    assert r.status_code == 200, r.text
    assert_same(r.json(), reference(folder, TEXTS[:3], "document"))


def test_a_multivector_model_lists_its_task_and_refuses_dense(served):
    client, folders = served
    folder = str(folders["fixed"])
    described = {m["model_name"]: m for m in client.get("/model/info").json()["loaded_models"]}[folder]
    assert (described["kind"], described["tasks"], described["multivector_dimensions"]) == ("multi-vector", ["multivector"], 16)
    assert described["prefixes"]["query"] == "[Q] " and described["prefixes"]["document"] == "[D] "
    r = client.post("/v1/embeddings", json={"input": "hello", "model": folder})
    assert r.status_code == 400 and "its tasks are multivector" in r.json()["error"]["message"]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_the_onnx_backend_serves_it_within_its_guard(served, tmp_path, dtype):
    """Encoder as an ONNX graph, the model's own heads after it; the guard is measured token by token."""
    _, folders = served
    folder = folders["fixed"]
    settings = Settings(models=(str(folder),), device="cpu", threads=2, backend="onnx", dtype=dtype,
                        min_fidelity=0.5, cache_dir=tmp_path / "cache", load_on_demand=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        fidelity = client.get("/model/info").json()["fidelity"]
        got = {role: [item["multivector"] for item in client.post(
            "/v1/encodings", json={"input": TEXTS, "input_type": role}).json()["data"]] for role in ("query", "document")}
    assert fidelity["mode"] == f"onnx {dtype}" and "multivector_mean_cosine" in fidelity["outputs"]
    for role, vectors in got.items():
        expected = reference(folder, TEXTS, role)
        if dtype == "fp32":
            for a, b in zip(vectors, expected, strict=True):
                assert np.allclose(np.asarray(a), b, atol=1e-4)
        else:
            cosines = np.concatenate([(np.asarray(a) * b).sum(axis=1) for a, b in zip(vectors, expected, strict=True)])
            assert cosines.mean() >= fidelity["outputs"]["multivector_mean_cosine"] - 0.05


def test_rerank_scores_by_maxsim(served):
    """The query encoded once as a query, each candidate as a document: the sum over the query's
    vectors of its best dot product (the model's `maxsim`), against numpy on the library's vectors."""
    client, folders = served
    folder = folders["fixed"]
    r = client.post("/rerank", json={"model": str(folder), "query": TEXTS[1], "candidates": TEXTS})
    assert r.status_code == 200, r.text
    q = reference(folder, [TEXTS[1]], "query")[0]
    expected = [float((q @ d.T).max(axis=1).sum()) if len(d) else 0.0 for d in reference(folder, TEXTS, "document")]
    assert np.allclose(r.json()["scores"], expected, atol=1e-4)

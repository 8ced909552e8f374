"""The cross-encoder fidelity guard (embedserve.backends.score_fidelity) and how the factory applies it.

The measures on hand-made score arrays (rank agreement is Spearman per query, the error bound
depends on the precision and the scores' spread), then `build_backend` with `_build` and
`TorchBackend` replaced by fakes whose score fidelity the test chooses, as test_factory.py does
for embedders: an explicit mode that fails is refused, auto falls back to torch fp32, and auto's
bf16 must also keep every score within 0.01 of fp32's.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from embedserve.backends import factory, score_fidelity
from embedserve.backends.base import Fidelity, ModelInfo
from embedserve.backends.fidelity import calibration_texts
from embedserve.backends.score_fidelity import (
    DOCUMENT_OFFSETS,
    EXACT_MAX_ABS_ERROR,
    REDUCED_MAX_ABS_ERROR,
    calibration_pairs,
    compare_scores,
    guard_failure,
    quantization_measure,
    spearman,
)
from embedserve.errors import FidelityTooLow
from embedserve.models.tasks import ModelKind, Task
from embedserve.settings import Settings

MODEL_PATH = Path("/models/acme--reranker")
CROSS_ENCODER = ModelKind("cross-encoder", frozenset({Task.SCORE}), "CrossEncoder", "test")


# ---- the calibration pairs ---------------------------------------------------------------


def test_every_calibration_text_is_a_query_and_a_document_eight_times():
    texts = calibration_texts()
    pairs = calibration_pairs()
    assert len(pairs) == len(texts) * len(DOCUMENT_OFFSETS) == 512
    assert all(query != document for query, document in pairs)
    assert set(Counter(q for q, _ in pairs).values()) == {8} and set(Counter(d for _, d in pairs).values()) == {8}
    # query by query, each with its 8 documents: the question meets its answer (the next line)
    assert pairs[8 * texts.index("What is the capital of Australia?")][1].startswith("Canberra is the capital")


# ---- the measures --------------------------------------------------------------------------


def test_spearman_is_one_for_the_same_order_and_minus_one_reversed():
    scores = np.array([0.1, 0.5, 0.3, 0.9, 0.7, 0.2, 0.8, 0.4])
    assert spearman(scores * 2 + 1, scores) == pytest.approx(1.0)  # the order, not the values
    assert spearman(-scores, scores) == pytest.approx(-1.0)


def test_one_adjacent_swap_of_eight_documents_costs_a_query_0_024():
    ref = np.arange(8, dtype=float)
    swapped = ref.copy()
    swapped[[3, 4]] = swapped[[4, 3]]
    assert spearman(swapped, ref) == pytest.approx(1 - 6 * 2 / (8 * 63))  # 0.97619


def test_ties_share_their_average_rank_and_a_flat_ranking_matches_only_a_flat_one():
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 1.5, 2.0])) == pytest.approx(np.sqrt(3) / 2)
    assert spearman(np.zeros(4), np.zeros(4)) == 1.0
    assert spearman(np.arange(4.0), np.zeros(4)) == 0.0


def ranked(queries=64, documents=8, labels=1, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, size=(queries, documents, labels))


def test_compare_scores_records_every_measure_in_the_outputs():
    ref = ranked()
    fast = ref + 0.001
    fast[0, :, 0] = fast[0, ::-1, 0]  # one query's order reversed
    fidelity = compare_scores("onnx int8", fast, ref, exact=False)
    out = fidelity.outputs
    assert set(out) == {"score_max_abs_error", "score_mean_abs_error", "score_rank_agreement",
                        "score_min_rank_agreement", "score_error_bound"}
    assert out["score_min_rank_agreement"] == fidelity.min_cosine < 0
    assert out["score_rank_agreement"] == fidelity.mean_cosine == pytest.approx((63 + fidelity.min_cosine) / 64)
    assert out["score_max_abs_error"] == pytest.approx(np.abs(fast - ref).max())
    assert out["score_error_bound"] == REDUCED_MAX_ABS_ERROR
    assert (fidelity.samples, fidelity.mode, fidelity.reference) == (512, "onnx int8", "torch fp32")
    assert fidelity.lowest_mean_cosine == fidelity.mean_cosine  # what --min-fidelity reads


def test_several_labels_are_ranked_label_by_label():
    ref = ranked(labels=3)
    fast = ref.copy()
    fast[:, :, 2] = -fast[:, :, 2]  # the third label's orders all reversed
    assert compare_scores("onnx int8", fast, ref, exact=False).mean_cosine == pytest.approx(1 / 3)


def test_the_bound_is_tight_for_fp32_and_scaled_by_the_spread_of_raw_logits():
    probabilities = ranked()
    assert compare_scores("onnx fp32", probabilities, probabilities, exact=True).outputs["score_error_bound"] == EXACT_MAX_ABS_ERROR
    logits = probabilities * 20 - 10  # an identity activation: scores spread over ~18
    spread = logits.max() - logits.min()
    bound = compare_scores("onnx int8", logits, logits, exact=False).outputs["score_error_bound"]
    assert bound == pytest.approx(REDUCED_MAX_ABS_ERROR * spread)


# ---- the bar ---------------------------------------------------------------------------------


def score_fidelity_of(mean: float, error: float, *, mode="onnx int8", bound=REDUCED_MAX_ABS_ERROR, worst=None) -> Fidelity:
    worst = mean - 0.05 if worst is None else worst
    outputs = {"score_max_abs_error": error, "score_mean_abs_error": error / 10, "score_rank_agreement": mean,
               "score_min_rank_agreement": worst, "score_error_bound": bound}
    return Fidelity(mode, "torch fp32", mean, worst, 512, outputs)


def test_the_guard_holds_rank_agreement_to_min_fidelity_and_the_error_to_its_bound():
    assert guard_failure(score_fidelity_of(0.995, 0.01), 0.99) is None
    assert guard_failure(score_fidelity_of(0.99, 0.05), 0.99) is None  # both at the bar
    low = guard_failure(score_fidelity_of(0.98, 0.01), 0.99)
    assert "mean per-query rank agreement (Spearman) of 0.980000" in low and "below --min-fidelity 0.99" in low
    assert "onnx int8" in low and "torch fp32" in low and "512 calibration pairs" in low and "error" not in low
    moved = guard_failure(score_fidelity_of(0.999, 0.2), 0.99)
    assert "max abs score error of 0.2, above its bound 0.05" in moved and "rank agreement" not in moved
    both = guard_failure(score_fidelity_of(0.9, 0.2), 0.99)
    assert "rank agreement" in both and "score error" in both


def test_the_quantisation_measure_reaches_the_target_only_when_both_measures_pass():
    target = 0.99
    assert quantization_measure(score_fidelity_of(1.0, 0.0), target) == 1.0
    assert quantization_measure(score_fidelity_of(1.0, REDUCED_MAX_ABS_ERROR), target) == pytest.approx(target)
    assert quantization_measure(score_fidelity_of(1.0, 0.06), target) < target  # error past the bound
    assert quantization_measure(score_fidelity_of(0.98, 0.0), target) == 0.98  # orders moved
    # costlier layers measure lower: the search can rank them by either measure
    assert quantization_measure(score_fidelity_of(1.0, 0.04), target) < quantization_measure(score_fidelity_of(1.0, 0.02), target)


# ---- build_backend on a cross-encoder ---------------------------------------------------------


@dataclass
class Scorer:
    """A fast mode of a cross-encoder as the factory sees it: its measured score fidelity."""

    fidelity: Fidelity
    speedup: float | None = None
    info: ModelInfo = field(init=False)

    def __post_init__(self):
        backend, dtype = self.fidelity.mode.split()
        self.info = ModelInfo(dimension=0, max_seq_length=16, pooling="none", normalize=False, vocab_size=100,
                              device="cpu", backend=backend, dtype=dtype, fidelity=self.fidelity, speedup=self.speedup,
                              tasks=frozenset({Task.SCORE}), kind="cross-encoder", score_labels=1)


@pytest.fixture
def fakes(monkeypatch):
    """A cross-encoder at MODEL_PATH on a CPU with bf16 matmuls (unless a test says no); `_build`
    returns state["built"], TorchBackend returns state["bf16"] for bf16 and records fp32 fallbacks."""
    state: dict = {"built": None, "bf16": None, "builds": [], "torch": [], "has_bf16": True}
    monkeypatch.setattr(factory, "detect_kind", lambda path: CROSS_ENCODER)
    monkeypatch.setattr(factory, "pick_device", lambda asked: "cpu" if asked == "auto" else asked)
    monkeypatch.setattr(factory, "cpu_has_bf16_matmul", lambda: state["has_bf16"])

    def fake_build(backend, dtype, device, settings, path):
        state["builds"].append((backend, dtype))
        return state["built"]

    def fake_torch(path, **kwargs):
        state["torch"].append(kwargs)
        return state["bf16"] if kwargs.get("dtype") == "bf16" else "torch fp32"

    monkeypatch.setattr(factory, "_build", fake_build)
    monkeypatch.setattr(factory, "TorchBackend", fake_torch)
    return state


def settings(**values) -> Settings:
    return Settings(models=("acme/reranker",), **values)


@pytest.mark.parametrize("explicit", [{"backend": "onnx", "dtype": "int8"}, {"backend": "onnx", "dtype": "fp32"},
                                      {"backend": "torch", "dtype": "bf16"}])
def test_an_explicit_cross_encoder_mode_that_fails_the_score_guard_is_refused(fakes, explicit):
    mode = f"{'onnx' if explicit['backend'] == 'onnx' else 'torch'} {explicit['dtype']}"
    fakes["built"] = Scorer(score_fidelity_of(0.97, 0.01, mode=mode))
    with pytest.raises(FidelityTooLow) as caught:
        factory.build_backend(settings(**explicit), MODEL_PATH)
    assert caught.value.status == 424 and f"refusing {MODEL_PATH}: {mode} keeps a mean per-query rank" in caught.value.message
    assert fakes["torch"] == []  # nothing served in its place


def test_an_fp32_graph_whose_scores_move_past_1e_4_is_refused(fakes):
    fakes["built"] = Scorer(score_fidelity_of(1.0, 3e-4, mode="onnx fp32", bound=EXACT_MAX_ABS_ERROR))
    with pytest.raises(FidelityTooLow, match=r"max abs score error of 0.0003, above its bound 0.0001"):
        factory.build_backend(settings(backend="onnx", dtype="fp32"), MODEL_PATH)


def test_a_cross_encoder_mode_within_the_bar_is_served(fakes):
    fakes["built"] = Scorer(score_fidelity_of(0.992, 0.01))
    assert factory.build_backend(settings(backend="onnx", dtype="int8"), MODEL_PATH) is fakes["built"]


def test_auto_runs_a_cross_encoder_on_the_onnx_graph_and_falls_back_to_torch_fp32(fakes, caplog):
    fakes["has_bf16"] = False
    fakes["built"] = Scorer(score_fidelity_of(1.0, 1e-6, mode="onnx fp32", bound=EXACT_MAX_ABS_ERROR))
    assert factory.build_backend(settings(), MODEL_PATH) is fakes["built"]
    assert fakes["builds"] == [("onnx", "fp32")]
    fakes["built"] = Scorer(score_fidelity_of(1.0, 1e-3, mode="onnx fp32", bound=EXACT_MAX_ABS_ERROR))
    with caplog.at_level(logging.WARNING, logger="embedserve.backends.factory"):
        assert factory.build_backend(settings(threads=2), MODEL_PATH) == "torch fp32"
    assert fakes["torch"] == [{"device": "cpu", "threads": 2}]
    assert "above its bound" in caplog.text and "falling back to torch fp32" in caplog.text


@pytest.mark.parametrize(
    ("mean", "error", "bound", "speedup", "served"),
    [
        (0.997, 0.001, REDUCED_MAX_ABS_ERROR, 2.0, "bf16"),  # near-ties swapped (worst query 0.95): scores barely moved
        (0.98, 0.001, REDUCED_MAX_ABS_ERROR, 2.0, "onnx"),  # orders moved: below --min-fidelity
        (1.0, 0.02, REDUCED_MAX_ABS_ERROR, 2.0, "onnx"),  # within the explicit bound, past auto's 0.01
        (1.0, 0.08, 10 * REDUCED_MAX_ABS_ERROR, 2.0, "bf16"),  # raw logits spread over 10: 0.08 is within 0.1
        (1.0, 0.001, REDUCED_MAX_ABS_ERROR, 1.2, "onnx"),
    ],
    ids=["kept", "orders-moved", "scores-moved", "logits-scaled", "not-faster"],
)
def test_auto_keeps_bf16_for_a_cross_encoder_only_if_its_scores_stay_within_0_01_and_it_is_faster(
    fakes, mean, error, bound, speedup, served, caplog
):
    fakes["bf16"] = Scorer(score_fidelity_of(mean, error, mode="torch bf16", worst=0.95, bound=bound), speedup=speedup)
    fakes["built"] = Scorer(score_fidelity_of(1.0, 1e-6, mode="onnx fp32", bound=EXACT_MAX_ABS_ERROR))
    with caplog.at_level(logging.INFO, logger="embedserve.backends.factory"):
        backend = factory.build_backend(settings(), MODEL_PATH)
    assert backend is (fakes["bf16"] if served == "bf16" else fakes["built"])
    assert fakes["torch"][0] == {"device": "cpu", "threads": factory.intra_op_threads(settings()), "dtype": "bf16", "compile": "off"}
    assert f"mean rank agreement {mean:.6f} (min 0.950000)" in caplog.text and f"{speedup:.2f}x" in caplog.text


def test_onnx_builds_the_scoring_graph_for_a_cross_encoder(monkeypatch, tmp_path):
    from embedserve.backends import onnx_backend, onnx_scoring

    monkeypatch.setattr(factory, "detect_kind", lambda path: CROSS_ENCODER)
    seen = []
    monkeypatch.setattr(onnx_scoring, "OnnxScoringBackend", lambda path, **kwargs: seen.append(kwargs) or "scoring")
    monkeypatch.setattr(onnx_backend, "OnnxBackend", lambda path, **kwargs: "embedding")
    chosen = settings(backend="onnx", dtype="int8", cache_dir=tmp_path, threads=1, int8_target=0.995)
    assert factory._build("onnx", "int8", "cpu", chosen, MODEL_PATH) == "scoring"
    assert seen == [{"threads": 1, "dtype": "int8", "cache_dir": tmp_path, "quantization_target": 0.995}]


def test_the_bounds_are_the_documented_ones():
    assert (score_fidelity.EXACT_MAX_ABS_ERROR, score_fidelity.REDUCED_MAX_ABS_ERROR) == (1e-4, 0.05)
    assert score_fidelity.AUTO_MAX_ABS_ERROR == 0.01

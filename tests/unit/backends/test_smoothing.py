"""Activation smoothing before int8 (backends/smoothing.py), on a tiny real BERT graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedserve.backends.base import Batch
from embedserve.backends.smoothing import channel_maxima, layer_norm_fed_inputs, smooth_graph

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "a small red car on the long road"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.support.tiny_models import build_bert_model

    return build_bert_model(tmp_path_factory.mktemp("tiny") / "acme--tiny-bert")


@pytest.fixture(scope="module")
def fp32(tiny_model, tmp_path_factory):
    """The tiny model's optimised fp32 graph (as the ONNX backend caches it) and its backend."""
    from embedserve.backends.onnx_backend import OnnxBackend

    cache = tmp_path_factory.mktemp("graphs")
    backend = OnnxBackend(tiny_model, dtype="fp32", cache_dir=cache)
    (graph,) = (cache / "onnx").glob("*/model.onnx")
    return graph, backend


def run(graph: Path, backend, texts: list[str]) -> np.ndarray:
    from embedserve.backends.onnx_export import open_session

    batch = Batch.from_ids(backend.tokenize(texts, truncate=True), pad_id=backend.pad_id)
    return backend._run(open_session(graph, 1), batch)


def feeds(backend, texts: list[str]) -> list[dict]:
    return [backend._feeds(Batch.from_ids(backend.tokenize(texts, truncate=True), pad_id=backend.pad_id))]


def test_the_smoothed_inputs_are_the_layer_norm_outputs_read_by_weight_matmuls(fp32):
    from tests.support.tiny_models import LAYERS

    graph, _ = fp32
    readers = layer_norm_fed_inputs(graph)
    # Per layer: the attention's Q, K and V projections share one input; the FFN's first layer has its own.
    assert sorted(len(names) for names in readers.values()) == sorted([3, 1] * LAYERS)


def test_smoothing_leaves_the_fp32_graph_s_output_unchanged(fp32, tmp_path):
    graph, backend = fp32
    readers = layer_norm_fed_inputs(graph)
    maxima = channel_maxima(graph, readers, feeds(backend, TEXTS))
    assert set(maxima) == set(readers) and all(m.ndim == 1 and (m > 0).all() for m in maxima.values())
    smoothed = tmp_path / "smoothed.onnx"
    assert smooth_graph(graph, smoothed, maxima, alpha=0.6) == len(readers)
    np.testing.assert_allclose(run(smoothed, backend, TEXTS), run(graph, backend, TEXTS), rtol=1e-4, atol=1e-4)


def test_smoothing_evens_out_the_channels_the_matmuls_see(fp32, tmp_path):
    graph, backend = fp32
    readers = layer_norm_fed_inputs(graph)
    before = channel_maxima(graph, readers, feeds(backend, TEXTS))
    smoothed = tmp_path / "smoothed.onnx"
    smooth_graph(graph, smoothed, before, alpha=1.0)  # alpha 1: every channel scaled to its own peak
    after = channel_maxima(smoothed, [f"{t}/smoothed" for t in readers], feeds(backend, TEXTS))
    for tensor in readers:
        assert np.ptp(after[f"{tensor}/smoothed"]) < np.ptp(before[tensor])


def test_int8_keeps_the_smoothing_only_when_it_brings_the_vectors_closer(tiny_model, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from embedserve.backends import onnx_backend

    real = onnx_backend.smooth_graph

    def damaging(src, dst, maxima, alpha):  # smooths, then spoils the weights it touched
        count = real(src, dst, maxima, alpha)
        model = onnx.load(str(dst))
        for init in model.graph.initializer:
            if init.name.endswith("/smoothing"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
        onnx.save(model, str(dst))
        return count

    monkeypatch.setattr(onnx_backend, "smooth_graph", damaging)
    declined = onnx_backend.OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=0.5)
    assert declined.smoothing_alpha is None
    assert declined.info.fidelity.mean_cosine > 0.9  # the plain int8 graph, not the spoilt one


def test_the_int8_choices_come_back_from_the_cache(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    built = OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=0.5)
    again = OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=0.5)
    assert again.cache_hit is True
    assert (again.smoothing_alpha, again.fp32_layers) == (built.smoothing_alpha, built.fp32_layers)
    assert again.info.fidelity.mean_cosine == pytest.approx(built.info.fidelity.mean_cosine, abs=1e-6)

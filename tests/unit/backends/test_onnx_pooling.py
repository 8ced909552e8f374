"""The ONNX backend pools as the model's own sentence-transformers modules do, whatever they are."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.base import Batch

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "a", "a small red car on the long road"]


@pytest.mark.parametrize(("pooling", "numpy_path"), [("mean", True), ("cls", False), ("max", False)])
def test_onnx_vectors_match_the_torch_modules_for_each_pooling(tmp_path, pooling, numpy_path):
    from embedserve.backends.onnx_backend import OnnxBackend
    from embedserve.backends.torch_backend import TorchBackend
    from tests.support.tiny_models import build_bert_model

    model = build_bert_model(tmp_path / f"acme--tiny-{pooling}", pooling=pooling)
    reference = TorchBackend(model, device="cpu")
    onnx = OnnxBackend(model, dtype="fp32", cache_dir=tmp_path / "graphs")
    assert onnx._torch.mean_pooling_only is numpy_path
    batch = Batch.from_ids(reference.tokenize(TEXTS, truncate=True), pad_id=reference.pad_id)
    np.testing.assert_allclose(onnx.embed(batch), reference.embed(batch), rtol=1e-4, atol=1e-5)

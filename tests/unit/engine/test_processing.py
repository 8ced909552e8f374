"""The plain pre/post-processing functions give, off the event loop, what the server gives."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.base import Batch, SparseVector
from embedserve.backends.fake import FakeBackend
from embedserve.engine import processing
from embedserve.errors import BadRequest, InvalidInput
from embedserve.models.tasks import Task

ALL = frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR})
TEXTS = ["hello world", "the quick brown fox", "a"]


def offline(backend: FakeBackend, texts: list[str]):
    """Bulk embedding without a server: tokenize, one forward pass, finish."""
    sequences = processing.tokenize_inputs(backend, "m", texts)
    outputs = backend.encode(Batch.from_ids(sequences, pad_id=backend.pad_id), ALL)
    return processing.finish_dense(outputs.dense, normalize=True), outputs


def test_offline_outputs_equal_the_servers(make_client):
    backend = FakeBackend(tasks=ALL)
    dense, outputs = offline(backend, TEXTS)
    client = make_client(backend=backend)
    data = client.post("/v1/encodings", json={"input": TEXTS}).json()["data"]
    for i, item in enumerate(data):
        assert np.allclose(item["dense"], dense[i], atol=1e-6)
        assert item["sparse"]["indices"] == outputs.sparse[i].indices.tolist()
        assert np.allclose(item["multivector"], outputs.multivector[i])


def test_finish_dense_cuts_and_renormalises():
    vectors = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    assert np.allclose(processing.finish_dense(vectors, normalize=False), vectors)
    assert np.allclose(processing.finish_dense(vectors, normalize=True), vectors / 13)
    assert np.allclose(processing.finish_dense(vectors, normalize=False, dimensions=2), [[0.6, 0.8]])


def test_finish_sparse_keeps_the_heaviest_terms_in_id_order():
    terms = SparseVector(np.array([3, 7, 9, 12]), np.array([0.5, 2.0, 0.1, 1.0], dtype=np.float32))
    top = processing.finish_sparse(terms, top_k=2)
    assert top.indices.tolist() == [7, 12] and top.values.tolist() == [2.0, 1.0]
    heavy = processing.finish_sparse(terms, min_weight=0.5)
    assert heavy.indices.tolist() == [3, 7, 12]
    both = processing.finish_sparse(terms, top_k=1, min_weight=0.5)
    assert both.indices.tolist() == [7]


def test_input_checks_name_the_input():
    with pytest.raises(InvalidInput, match=r"input\[1\] is an empty string"):
        processing.check_inputs(["a", ""], max_inputs=10)
    with pytest.raises(InvalidInput, match="at most 1 are allowed"):
        processing.check_inputs(["a", "b"], max_inputs=1)
    with pytest.raises(BadRequest, match="between 1 and 8"):
        processing.check_dimensions(9, 8, "m")

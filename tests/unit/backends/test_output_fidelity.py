"""The per-output fidelity measures (backends/fidelity.py) on outputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.base import Outputs, SparseVector
from embedserve.backends.fake import FakeBackend
from embedserve.backends.fidelity import compare_outputs, encode_all
from embedserve.models.tasks import Task


def sparse(pairs: dict[int, float]) -> SparseVector:
    ids = sorted(pairs)
    return SparseVector(np.array(ids, dtype=np.int64), np.array([pairs[i] for i in ids], dtype=np.float32))


def test_identical_outputs_measure_perfect():
    backend = FakeBackend(tasks=frozenset(Task))
    sequences = [[1, 5, 6, 5, 2], [1, 9, 2], [1, 7, 8, 9, 10, 11, 2]]
    outputs = encode_all(sequences, backend.encode, frozenset({Task.SPARSE, Task.MULTIVECTOR}), backend.pad_id)
    measured = compare_outputs(outputs, outputs)
    assert measured == pytest.approx({
        "sparse_mean_cosine": 1.0, "sparse_min_cosine": 1.0, "sparse_top10_overlap": 1.0,
        "multivector_mean_cosine": 1.0, "multivector_min_cosine": 1.0, "maxsim_max_abs_error": 0.0,
    })


def test_encode_all_keeps_input_order_across_length_sorted_batches():
    backend = FakeBackend(tasks=frozenset(Task))
    sequences = [[1, *range(3, 3 + n), 2] for n in (9, 1, 5, 14, 2)] * 5  # 25 inputs: two batches
    outputs = encode_all(sequences, backend.encode, frozenset({Task.SPARSE, Task.MULTIVECTOR}), backend.pad_id)
    for ids, terms, vectors in zip(sequences, outputs.sparse, outputs.multivector, strict=True):
        expected = backend.sparse_for(ids)
        assert np.array_equal(terms.indices, expected.indices) and np.array_equal(terms.values, expected.values)
        assert np.array_equal(vectors, backend.multivector_for(ids))


def test_known_sparse_and_multivector_differences():
    ref = Outputs(sparse=[sparse({1: 1.0, 2: 1.0}), sparse({})], multivector=[np.eye(2, dtype=np.float32)] * 2)
    rotated = np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
    fast = Outputs(sparse=[sparse({1: 1.0, 3: 1.0}), sparse({})], multivector=[rotated, np.eye(2, dtype=np.float32)])
    measured = compare_outputs(fast, ref)
    # text 0: cosine of (1,1,0) and (1,0,1) = 0.5; text 1: both empty = identical
    assert measured["sparse_mean_cosine"] == pytest.approx(0.75)
    assert measured["sparse_min_cosine"] == pytest.approx(0.5)
    assert measured["sparse_top10_overlap"] == pytest.approx(0.5)  # 1 of text 0's 2 terms; text 1 has none to find
    # token cosines 1, sqrt(0.5), 1, 1
    assert measured["multivector_mean_cosine"] == pytest.approx((3 + np.sqrt(0.5)) / 4)
    assert measured["multivector_min_cosine"] == pytest.approx(np.sqrt(0.5))
    # MaxSim(text 0 -> text 1): fast mean(max(1,0), max(.707,.707)) = 0.854; reference mean(1, 1) = 1
    assert measured["maxsim_max_abs_error"] == pytest.approx(1 - (1 + np.sqrt(0.5)) / 2)

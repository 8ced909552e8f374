"""Pick and build the backend for a model from the settings, with the fidelity guard.

`auto` picks, per device, the fastest mode that keeps fidelity: on CPU the optimised fp32
ONNX graph (torch if the export fails); on CUDA torch in fp16. A mode asked for explicitly
that fails the guard is refused with a clear error; one that `auto` picked falls back to
torch fp32 instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embedserve.backends.base import Backend
from embedserve.backends.torch_backend import TorchBackend, physical_cores, pick_device
from embedserve.errors import FidelityTooLow, ModelLoadError
from embedserve.settings import Settings

log = logging.getLogger(__name__)


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


def build_backend(settings: Settings, path: Path) -> Backend:
    device = pick_device(settings.device)
    backend_name, dtype = choose_mode(settings.backend, settings.dtype, device)
    automatic = settings.backend == "auto" and settings.dtype == "auto"
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
    if fidelity is not None and fidelity.mean_cosine < settings.min_fidelity:
        message = (
            f"{fidelity.mode} keeps a mean cosine of {fidelity.mean_cosine:.6f} (min {fidelity.min_cosine:.6f}) "
            f"to {fidelity.reference} on the calibration set, below --min-fidelity {settings.min_fidelity}"
        )
        if not automatic:
            raise FidelityTooLow(f"refusing {path}: {message}")
        log.warning("%s; falling back to torch fp32", message)
        return TorchBackend(path, device=device, threads=intra_op_threads(settings))
    return backend


def _build(backend: str, dtype: str, device: str, settings: Settings, path: Path) -> Backend:
    if backend == "onnx":
        from embedserve.backends.onnx_backend import OnnxBackend

        return OnnxBackend(
            path,
            threads=intra_op_threads(settings),
            dtype=dtype,
            cache_dir=settings.cache_dir,
            quantization_target=max(settings.min_fidelity, settings.int8_target),
        )
    return TorchBackend(path, device=device, threads=intra_op_threads(settings), dtype=dtype)

"""torch.compile of the torch backend's encoder, kept only where it measures faster.

Why: on CPU bf16 mixed precision (AMX) the eager encoder spends a good part of its time between
the matmuls (layer norms, GELU, softmax and the casts autocast inserts around every Linear), and
Inductor fuses those into a few C++ loops. Measured in-process on 2 vCPUs of an Intel Xeon
(family 6 model 167, AMX), one thread, eager bf16 vs compiled bf16 of the same batches:
all-MiniLM-L6-v2 1.24-1.42x (batches of 1-64 texts), its cross-encoder shape 1.28-1.47x
(1-32 pairs of 22-77 tokens), scores within 4e-4 of eager bf16.

How it stays safe to serve:
- `dynamic=True`, so one graph serves every (batch, length) the batcher makes. Dynamo still
  specialises a dimension of size 1, so warm-up runs a batch of one input besides the calibration
  batches: measured, 60 random (batch, length) shapes from two worker threads at once after that
  warm-up caused no recompilation and matched eager within cosine 0.9999.
- Serving calls run the module through dynamo's run-only mode (`torch._dynamo.run`): graphs the
  warm-up compiled are used, and a shape that would still need a new graph runs eager instead of
  stalling its batch for the seconds a compilation takes. Run-only is per call and per thread;
  `torch.compiler.set_stance("eager_on_recompile")` would do the same through process-wide state,
  which concurrent workers entering and leaving it can leave set, and a model loaded later would
  then never compile.
- Dynamo keeps at most `recompile_limit` graphs per code object, and every model runs the same
  sentence-transformers `forward`: the limit is raised so that several compiled models (two
  graphs each) do not quietly run eager.
- Compilation takes 10-25 s at load (less once Inductor's on-disk cache holds the graphs), so
  `auto` compiles only the CPU bf16 mode that auto already measures, and keeps the compiled encoder
  only if the calibration set runs at least MIN_SPEEDUP faster than eager; any compile failure
  (no C++ compiler, an unsupported operator) leaves the eager encoder in place under `auto`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.1  # what auto asks of a compiled encoder over eager on the calibration set


def use_cache_dir(cache_dir: Path) -> None:
    """Inductor's compiled kernels beside our ONNX graph cache (a restart compiles much faster),
    unless the environment already chose a place."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).expanduser() / "inductor"))


def run_only(module: torch.nn.Module) -> Callable:
    """The module with the graphs compiled so far, eager where none fits; never compiles."""
    return torch._dynamo.run(module)


def best_of(seconds: Callable[[], float], runs: int = 2) -> float:
    return min(seconds() for _ in range(runs))


RECOMPILE_LIMIT = 64


def compile_module(module: torch.nn.Module) -> Callable:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return torch.compile(module, dynamic=True)


def measure(
    eager_seconds: float, warm: Callable[[], None], seconds: Callable[[], float]
) -> tuple[float, Exception | None]:
    """Warm the compiled encoder (compiles it) and time it: (speed-up over eager, None), or
    (0.0, the error) when compilation fails."""
    try:
        warm()
        return eager_seconds / max(best_of(seconds), 1e-9), None
    except Exception as exc:  # noqa: BLE001 - Inductor can fail in many ways; eager still works
        log.warning("torch.compile failed (%s: %s)", type(exc).__name__, exc)
        return 0.0, exc

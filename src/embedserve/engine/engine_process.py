"""The engine process of `--api-processes N` (issue 16): the one model pool, its batching workers
and backends, and the fine-tuning jobs, answering the front-end processes over a Unix socket.

It listens at once (front-ends connect and see "loading" until the start-up models are in), loads
the operator's models, then the models requests had loaded into the engine that ran before it (an
engine restarted after a crash comes back with its models), and serves until SIGTERM. The
supervisor (processes.py) sends SIGTERM only once every front-end has drained, so nothing is in
flight by then. A start-up model that fails to load ends the process with EXIT_STARTUP_FAILED,
which stops the whole server, as it does in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from embedserve.settings import Settings

log = logging.getLogger(__name__)

EXIT_STARTUP_FAILED = 3
SOCKET_NAME = "engine.sock"
SUPERVISOR_PID = "EMBEDSERVE_SUPERVISOR_PID"  # set by processes.py for its children (PID 1 in a container is fine)


def socket_path(runtime: Path) -> Path:
    return runtime / SOCKET_NAME


def die_with_parent() -> None:
    """SIGTERM this process when the supervisor dies, however it dies (SIGKILL included), so no
    front-end or engine outlives it holding the port or the GPU (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor and os.getppid() != int(supervisor):  # it died before the call: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)


def engine_main(settings: Settings, runtime: str) -> None:
    """A spawned process's entry point."""
    from embedserve.logs import configure_logging
    from embedserve.server import quiet_third_parties

    die_with_parent()
    quiet_third_parties()
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    sys.exit(asyncio.run(serve_engine(settings, Path(runtime))))


async def serve_engine(settings: Settings, runtime: Path) -> int:
    from embedserve.api.app import default_backend_factory
    from embedserve.engine.engine_handlers import EngineHandlers
    from embedserve.engine.ipc import EngineServer
    from embedserve.engine.service import EmbeddingService
    from embedserve.metrics import Metrics
    from embedserve.training.manager import JobManager

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    service = EmbeddingService(settings, default_backend_factory(settings), observer=Metrics())
    jobs = JobManager(settings)
    server = EngineServer({})
    handlers = EngineHandlers(service.pool, server, service=service, jobs=jobs, remember=runtime / "models.json")
    server.handlers = handlers.handlers()
    path = socket_path(runtime)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a previous engine's, if it was killed
    await server.start(str(path))
    await jobs.start()
    code = 0
    try:
        remembered = handlers.remembered()
        try:
            await service.pool.load_all(settings.models)
        except Exception as exc:  # noqa: BLE001 - reported on /ready and in the log, then the server stops
            log.error("could not load models: %s", exc)
            handlers.load_error = str(exc)
            await handlers.announce()
            return EXIT_STARTUP_FAILED
        handlers.ready = True  # as in one process: ready once the operator's models are in
        handlers.restoring = bool(remembered)
        await handlers.announce()
        for name in remembered:
            try:
                await service.pool.load(name, request=True)
            except Exception as exc:  # noqa: BLE001 - one that no longer loads is not a reason to stay down
                log.warning("model %s, loaded before the engine restarted, did not load again: %s", name, exc)
        if remembered:
            handlers.restoring = False
            await handlers.announce()
        log.info("engine ready", extra={"models": [m.id for m in service.pool.models]})
        await stop.wait()
    finally:
        await server.close()
        await jobs.stop()
        await service.pool.close()
    return code

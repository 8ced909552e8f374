"""`--api-processes N`: N front-end processes on one listening socket, one engine process (issue 16).

A GPU that one Python process cannot keep busy is kept busy by moving the per-request work (HTTP,
JSON, validation, tokenization, response encoding) onto the host's other cores: each front-end
runs the whole FastAPI app, middleware and all, on the socket this supervisor bound; the engine
(engine/engine_process.py) holds the models and batches every front-end's token ids together.

This process only supervises:
* a front-end that dies is replaced; only the requests it held are lost;
* an engine that dies is restarted (it loads its models again); meanwhile the front-ends answer
  503 and /ready is 503 (engine/remote.py);
* SIGTERM (or Ctrl-C): every front-end drains (stops accepting, finishes in-flight requests,
  --graceful-timeout), then the engine stops, and the supervisor exits 0;
* SIGHUP is passed to the front-ends (each re-reads --api-key-file).
Metrics of every process land in one folder (prometheus-client's multiprocess mode), so /metrics,
from whichever front-end answers, reports the whole server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from embedserve.engine.engine_process import (
    EXIT_STARTUP_FAILED, SUPERVISOR_PID, die_with_parent, engine_main, socket_path,
)
from embedserve.settings import Settings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
STABLE_SECONDS = 10.0  # a process that lived this long restarts at once when it dies
RESTART_BACKOFF = (0.5, 30.0)  # seconds before restarting one that died sooner: first, and most
MAX_AUTO_FRONT_ENDS = 8


def resolve_api_processes(settings: Settings) -> int:
    """How many processes take HTTP requests. `auto`: 1 (everything in one process) unless the models
    run on CUDA; there, front-ends on the spare cores (one for the engine's own thread, one for the OS).
    The figures behind both choices are in docs/benchmarks.md ("Issue 16")."""
    if settings.api_processes != "auto":
        return int(settings.api_processes)
    if not settings.device.startswith(("auto", "cuda")):
        return 1
    try:
        import torch

        on_cuda = torch.cuda.is_available()
    except ImportError:
        on_cuda = False
    if not on_cuda:
        return 1
    cores = len(os.sched_getaffinity(0))
    return max(1, min(MAX_AUTO_FRONT_ENDS, cores - 2))


def frontend_main(settings: Settings, runtime: str, sock: socket.socket) -> None:
    """A spawned front-end: the app, served on the shared socket, its models in the engine."""
    from embedserve.api.app import create_app
    from embedserve.logs import configure_logging
    from embedserve.server import DrainingServer, quiet_third_parties, uvicorn_config

    die_with_parent()
    quiet_third_parties()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, engine_socket=str(socket_path(Path(runtime))))
    server = DrainingServer(uvicorn_config(settings, app), app.state, handshake_timeout=settings.header_timeout)
    server.run(sockets=[sock])


class Supervisor:
    def __init__(self, settings: Settings, front_ends: int):
        self.settings = settings
        self.count = front_ends
        self.context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads
        self.runtime = Path(tempfile.mkdtemp(prefix="embedserve-"))
        self.metrics_dir = self.runtime / "metrics"
        self.metrics_dir.mkdir()
        self.engine: multiprocessing.Process | None = None
        self.front_ends: list[multiprocessing.Process] = []
        self.stopping = False
        self.failed = False
        self._started: dict[int | None, float] = {}  # pid -> when it started
        self._due: dict[int | None, float] = {}  # pid of a dead process -> when it may be replaced
        self._backoff: dict[str, float] = {}  # process name -> the wait its next quick death earns

    def run(self) -> int:
        # Before any child starts: they inherit it, and prometheus-client reads it when imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        os.environ[SUPERVISOR_PID] = str(os.getpid())
        from embedserve.server import uvicorn_config

        sock = uvicorn_config(self.settings, "embedserve:app").bind_socket()
        sock.set_inheritable(True)
        previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self.engine = self._start_engine()
            self.front_ends = [self._start_front_end(i, sock) for i in range(self.count)]
            log.info("serving with %d front-end processes (pids %s) and one engine process (pid %s)", self.count,
                     " ".join(str(p.pid) for p in self.front_ends), self.engine.pid)
            while not self.stopping:
                time.sleep(POLL_SECONDS)
                self._watch(sock)
            self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
            shutil.rmtree(self.runtime, ignore_errors=True)
        return 1 if self.failed else 0

    def _signal(self, sig: int, frame) -> None:
        if sig == signal.SIGHUP:
            for process in self.front_ends:
                if process.pid is not None and process.is_alive():
                    os.kill(process.pid, signal.SIGHUP)
            return
        self.stopping = True

    def _start_engine(self) -> multiprocessing.Process:
        process = self.context.Process(
            target=engine_main, args=(self.settings, str(self.runtime)), name="embedserve-engine", daemon=False
        )
        process.start()
        self._started[process.pid] = time.monotonic()
        return process

    def _start_front_end(self, index: int, sock: socket.socket) -> multiprocessing.Process:
        process = self.context.Process(
            target=frontend_main, args=(self.settings, str(self.runtime), sock), name=f"embedserve-api-{index}",
            daemon=False,
        )
        process.start()
        self._started[process.pid] = time.monotonic()
        return process

    def _watch(self, sock: socket.socket) -> None:
        engine = self.engine
        if engine is not None and not engine.is_alive() and self._may_restart(engine):
            self._forget(engine)
            if engine.exitcode == EXIT_STARTUP_FAILED:
                log.error("a start-up model failed to load; stopping")
                self.failed = self.stopping = True
                return
            self.engine = self._start_engine()
            log.error("the engine process exited (code %s); restarted it with its models (pid %s)",
                      engine.exitcode, self.engine.pid)
        for index, process in enumerate(self.front_ends):
            if not process.is_alive() and self._may_restart(process):
                self._forget(process)
                self.front_ends[index] = self._start_front_end(index, sock)
                log.error("front-end process %s exited (code %s); started another (pid %s)",
                          process.pid, process.exitcode, self.front_ends[index].pid)

    def _may_restart(self, process: multiprocessing.Process) -> bool:
        """A process that dies soon after it started waits before its replacement starts, twice as
        long each time (up to RESTART_BACKOFF[1]), so one that can't start doesn't spin a core. Its
        lifetime is taken when it is first seen dead, not at each look while it waits."""
        now = time.monotonic()
        if process.pid not in self._due:
            stable = now - self._started.pop(process.pid, now) >= STABLE_SECONDS
            wait = 0.0 if stable else self._backoff.get(process.name, 0.0)
            self._backoff[process.name] = 0.0 if stable else min(max(wait * 2, RESTART_BACKOFF[0]), RESTART_BACKOFF[1])
            self._due[process.pid] = now + wait
        if now < self._due[process.pid]:
            return False
        del self._due[process.pid]
        return True

    def _forget(self, process: multiprocessing.Process) -> None:
        """A dead process's live gauges leave the totals (its counters stay: they happened)."""
        from prometheus_client import multiprocess

        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, str(self.metrics_dir))

    def _shutdown(self) -> None:
        """Front-ends drain first (their in-flight requests still need the engine), then the engine."""
        grace = (self.settings.graceful_timeout or 60.0) + 10.0
        for process in self.front_ends:
            if process.is_alive():
                process.terminate()
        _join(self.front_ends, grace)
        if self.engine is not None:
            if self.engine.is_alive():
                self.engine.terminate()
            _join([self.engine], grace)


def _join(processes: list[multiprocessing.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning("process %s did not stop in time; killing it", process.pid)
            process.kill()
            process.join()


def run_processes(settings: Settings, front_ends: int) -> None:
    sys.exit(Supervisor(settings, front_ends).run())

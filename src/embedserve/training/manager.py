"""Runs fine-tuning jobs: one process each, watched from the server's event loop.

A job is a folder (`<state-dir>/jobs/<id>/`, laid out as training/spec.py says) and a row of the
store. `submit` writes the folder and starts `python -m embedserve.training.run <job_dir>` in its
own process group, its threads limited to --train-threads, its output in `log.txt`; a watcher
task tails its `events.jsonl` into the store (status, progress, metrics, events) until the
process exits. A process that exits without a `completed` or `failed` event (a crash, an
out-of-memory kill) leaves its job `failed` with the exit code or signal; the server is untouched.

Restarts: jobs a previous server left pending or running are marked `interrupted` at start (a
process it left behind is stopped first); they resume from their last checkpoint only when asked
(`resume`, POST /v1/fine_tuning/jobs/{id}/resume), never by themselves, so a server that
crashed mid-training does not start competing with its own traffic on restart. At shutdown,
running jobs are stopped and marked `interrupted` the same way.

No FastAPI here: errors are embedserve.errors classes, which the API layer maps to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from embedserve.errors import Conflict, JobNotFound, NotReady, TooManyJobs, TrainingDisabled, shown
from embedserve.settings import Settings
from embedserve.training.data import read_pairs
from embedserve.training.defaults import prepare_job
from embedserve.training.files import TrainingFiles
from embedserve.training.intake import JobRequest, check_hyperparameters, check_name
from embedserve.training.spec import Event, JobSpec
from embedserve.training.store import ACTIVE, FINISHED, JobRecord, JobStore

log = logging.getLogger(__name__)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS")
RESUME_HINT = "POST /v1/fine_tuning/jobs/{id}/resume continues it from its last checkpoint"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"the training process was killed by signal {name} before it finished"
    if returncode == 0:
        return "the training process exited without reporting a result"
    return f"the training process exited with code {returncode} without reporting why (see the job's log)"


class JobManager:
    def __init__(
        self,
        settings: Settings,
        *,
        command: Sequence[str] | None = None,
        poll_interval: float = 0.25,
        stop_timeout: float = 10.0,
    ):
        self.settings = settings
        self.command = list(command) if command else [sys.executable, "-m", "embedserve.training.run"]
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.jobs_dir = settings.state_dir / "jobs"
        self.store: JobStore | None = None
        self.files = TrainingFiles(settings, self._db)  # uploaded data (POST /v1/files), in the same store
        self._procs: dict[str, subprocess.Popen] = {}
        self._watchers: dict[str, asyncio.Task] = {}
        self._cancelled: set[str] = set()
        self._stopping = False

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the store; without --models-dir training is off and --state-dir is never touched."""
        if self.settings.models_dir is None:
            return
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.settings.state_dir / "jobs.sqlite")
        for job in self.store.list(statuses=ACTIVE):
            stop_orphan(job)
            self._interrupt(job.id, "the server restarted while this job was " + job.status)

    async def stop(self) -> None:
        """Running jobs are stopped (SIGTERM, then SIGKILL after `stop_timeout`) and marked interrupted."""
        self._stopping = True
        procs = dict(self._procs)
        for proc in procs.values():
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in procs.values():
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        if self._watchers:  # their last events (a job that completed just now stays completed)
            await asyncio.wait(list(self._watchers.values()), timeout=self.poll_interval * 4 + 1)
        for task in self._watchers.values():
            task.cancel()
        for job_id in procs:
            job = self._db().get(job_id)
            if job is not None and job.status in ACTIVE and job_id not in self._cancelled:
                self._interrupt(job_id, "the server stopped while this job was running")
        self._procs.clear()
        if self.store is not None:
            self.store.close()
            self.store = None

    # ---- jobs ---------------------------------------------------------------------------------

    def check_new_name(self, name: str) -> str:
        """A name the result may take: plain, not a folder under --models-dir, not another live job's."""
        models_dir = self.models_dir()
        check_name(name)
        if (models_dir / name).exists():
            raise Conflict(f"a model named {shown(name)} already exists", param="model_name")
        if any(job.name == name for job in self._db().list(statuses=(*ACTIVE, "interrupted"))):
            raise Conflict(f"a fine-tuning job is already making a model named {shown(name)}", param="model_name")
        return name

    def models_dir(self) -> Path:
        if self.settings.models_dir is None:
            raise TrainingDisabled(
                "fine-tuning needs --models-dir (where trained models are saved and served from); this server has none"
            )
        return self.settings.models_dir

    def get(self, job_id: str) -> JobRecord:
        job = self._db().get(job_id)
        if job is None:
            raise JobNotFound(f"no fine-tuning job {shown(job_id)}", param="job_id")
        return job

    def list(self, limit: int | None = None) -> list[JobRecord]:
        return self._db().list(limit=limit)

    def events(self, job_id: str, limit: int | None = None):
        self.get(job_id)
        return self._db().events(job_id, limit=limit)

    async def submit(self, request: JobRequest) -> JobRecord:
        self.check_new_name(request.name)
        self._check_capacity()
        job_id = str(uuid.uuid4())
        job_dir = self.jobs_dir / job_id
        output_dir = self.models_dir() / request.name
        hp = check_hyperparameters(request.hyperparameters)
        # Without validation pairs, prepare_job holds out a seeded split of the training pairs.
        spec = prepare_job(
            job_id=job_id, job_dir=job_dir, name=request.name, base_model=request.base_path,
            base_name=request.base_name, method=request.method, train=list(request.train.pairs),
            validation=list(request.validation.pairs) if request.validation is not None else None,
            output_dir=output_dir, hyperparameters=hp, threads=self.settings.train_threads,
        )
        job = JobRecord(
            id=job_id, name=request.name, base=request.base_name, method=request.asked or request.method,
            type="full" if request.method == "full" else "lora", job_dir=str(job_dir), output_dir=str(output_dir),
            message=request.message or "queued", hyperparameters=dataclasses.asdict(hp),
            train_count=len(request.train.pairs), ignored_lines=request.train.ignored,
            validation_count=len(read_pairs(spec.validation_file)) if spec.validation_file else None,
            suffix=request.suffix,
        )
        self._db().insert(job)
        note = f"{job.train_count} training pairs ({job.ignored_lines} lines ignored)"
        self._db().add_event(job_id, "message", {"message": f"job created: {note}"})
        if request.message:
            self._db().add_event(job_id, "message", {"message": request.message})
        self._spawn(job_id, job_dir)
        return self.get(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.status in FINISHED:
            raise Conflict(f"fine-tuning job {shown(job_id)} is already {job.status}", param="job_id")
        self._cancelled.add(job_id)
        self._db().update(job_id, status="cancelled", message="cancelled", finished_at=time.time())
        self._db().add_event(job_id, "message", {"message": "cancelled by request"})
        proc = self._procs.get(job_id)
        if proc is not None:
            _signal(proc, signal.SIGTERM)
            asyncio.get_running_loop().call_later(self.stop_timeout, _signal, proc, signal.SIGKILL)
        return self.get(job_id)

    async def resume(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.status != "interrupted":
            raise Conflict(f"fine-tuning job {shown(job_id)} is {job.status}: only an interrupted job resumes")
        self._check_capacity()
        job_dir = Path(job.job_dir)
        spec = JobSpec.read(job_dir / "spec.json")
        dataclasses.replace(spec, resume=True, threads=self.settings.train_threads).write(job_dir / "spec.json")
        self._db().update(job_id, status="pending", message="resuming from the last checkpoint", error=None)
        self._db().add_event(job_id, "message", {"message": "resumed from the last checkpoint"})
        self._spawn(job_id, job_dir)
        return self.get(job_id)

    def running(self) -> int:
        return sum(1 for proc in self._procs.values() if proc.poll() is None)

    # ---- the process and its events ----------------------------------------------------------------

    def _check_capacity(self) -> None:
        if self._stopping:
            raise TooManyJobs("the server is stopping; no new fine-tuning jobs start")
        # A job counts until it has finished, not until its process has exited: a client that
        # sees `completed` may start the next job while the last one's interpreter is still exiting.
        active = [job_id for job_id in self._procs if self.get(job_id).status not in FINISHED]
        if len(active) >= self.settings.max_train_jobs:
            raise TooManyJobs(
                f"{len(active)} fine-tuning jobs are running (--max-train-jobs {self.settings.max_train_jobs}); "
                "retry once one has finished"
            )

    def _spawn(self, job_id: str, job_dir: Path) -> None:
        events = job_dir / "events.jsonl"
        offset = events.stat().st_size if events.exists() else 0  # a resumed job's old events are in the store
        threads = str(self.settings.train_threads)
        env = {**os.environ, **{var: threads for var in THREAD_VARS}, "TOKENIZERS_PARALLELISM": "false"}
        with open(job_dir / "log.txt", "ab") as out:
            proc = subprocess.Popen(
                [*self.command, str(job_dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,  # its own process group: cancel stops its children too
            )
        self._procs[job_id] = proc
        self._db().update(job_id, pid=proc.pid)
        self._watchers[job_id] = asyncio.get_running_loop().create_task(self._watch(job_id, proc, events, offset))

    async def _watch(self, job_id: str, proc: subprocess.Popen, path: Path, offset: int) -> None:
        final: str | None = None
        partial = b""
        try:
            while True:
                exited = proc.poll() is not None
                offset, partial, seen = self._read_events(job_id, path, offset, partial)
                final = seen or final
                if exited:
                    break
                await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a watcher must never die silently
            log.exception("watching fine-tuning job %s failed", job_id)
        self._procs.pop(job_id, None)
        self._watchers.pop(job_id, None)
        if job_id in self._cancelled or self._stopping or final is not None:
            return
        error = describe_exit(proc.returncode if proc.returncode is not None else -signal.SIGKILL)
        log.warning("fine-tuning job %s: %s", job_id, error)
        self._db().update(job_id, status="failed", error=error, message="failed", finished_at=time.time())
        self._db().add_event(job_id, "failed", {"error": error})

    def _read_events(self, job_id: str, path: Path, offset: int, partial: bytes) -> tuple[int, bytes, str | None]:
        if not path.exists():
            return offset, partial, None
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
        final = None
        lines = (partial + chunk).split(b"\n")
        for line in lines[:-1]:
            if line.strip():
                try:
                    event = Event.parse(line.decode("utf-8"))
                except (ValueError, TypeError):
                    log.warning("fine-tuning job %s wrote an unreadable event: %r", job_id, line[:200])
                    continue
                if event.type in ("completed", "failed"):
                    final = event.type
                self._apply(job_id, event)
        return offset + len(chunk), lines[-1], final

    def _apply(self, job_id: str, event: Event) -> None:
        data = {k: v for k, v in dataclasses.asdict(event).items() if v is not None and k not in ("type", "created_at")}
        self._db().add_event(job_id, event.type, data, created_at=event.created_at)
        if job_id in self._cancelled or (self._stopping and event.type == "failed"):
            return  # a cancelled job stays cancelled; one stopped by shutdown becomes interrupted
        changes: dict = {}
        if event.type == "started":
            job = self.get(job_id)
            changes.update(status="running", message=event.message or "training")
            if job.started_at is None:
                changes["started_at"] = event.created_at
        elif event.type == "progress":
            changes.update(status="running")
            if event.step is not None:
                changes["steps"] = event.step
            if event.total_steps:
                changes["total_steps"] = event.total_steps
                changes["progress"] = round(min(99.0, 100.0 * (event.step or 0) / event.total_steps), 1)
            if event.epoch is not None:
                changes["epoch"] = event.epoch
            if event.loss is not None:
                changes["loss"] = event.loss
        elif event.type == "metrics" and event.metrics is not None:
            changes["metrics_after" if event.stage == "after" else "metrics_before"] = event.metrics
        elif event.type == "message" and event.message:
            changes["message"] = event.message
        elif event.type == "completed":
            changes.update(status="completed", progress=100.0, finished_at=event.created_at, message="completed")
            if event.metrics is not None:
                changes["metrics_after"] = event.metrics
        elif event.type == "failed":
            changes.update(status="failed", error=event.error or "training failed", finished_at=event.created_at,
                           message="failed")
        self._db().update(job_id, **changes)

    def _interrupt(self, job_id: str, why: str) -> None:
        message = f"interrupted: {why}; {RESUME_HINT.format(id=job_id)}"
        self._db().update(job_id, status="interrupted", message=message, pid=None)
        self._db().add_event(job_id, "message", {"message": message})

    def _db(self) -> JobStore:
        if self.store is None:
            self.models_dir()  # training off: say so
            raise NotReady("fine-tuning jobs are not available yet: the server is starting or stopping")
        return self.store


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def stop_orphan(job: JobRecord) -> None:
    """A training process a previous server left running (it was killed without stopping it):
    stopped, but only when the pid is still that job's (its command line names the job folder)."""
    if job.pid is None:
        return
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if job.job_dir.encode() in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)

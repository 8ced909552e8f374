"""Fine-tuning jobs as a front-end process sees them (issue 16, `--api-processes` above 1).

Jobs run as children of the engine process (its `JobManager` starts and watches them, and stops
them when it stops), so there is one set of running jobs however many front-ends take requests.
A front-end reads jobs, events and uploaded files from the same SQLite store under --state-dir;
creating, cancelling and resuming a job are the engine's operations (engine/engine_handlers.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from embedserve.engine.ipc import EngineClient
from embedserve.settings import Settings
from embedserve.training.data import Pair, Parsed
from embedserve.training.intake import JobRequest
from embedserve.training.manager import JobManager
from embedserve.training.spec import Hyperparameters
from embedserve.training.store import JobRecord, JobStore


def job_request_to_dict(request: JobRequest) -> dict[str, Any]:
    return dataclasses.asdict(request)


def _parsed(data: dict[str, Any] | None) -> Parsed | None:
    if data is None:
        return None
    return Parsed([Pair(**pair) for pair in data["pairs"]], data["ignored"])


def job_request_from_dict(data: dict[str, Any]) -> JobRequest:
    hp = dict(data["hyperparameters"])
    if hp.get("lora_target_modules") is not None:
        hp["lora_target_modules"] = tuple(hp["lora_target_modules"])
    return JobRequest(**{
        **data, "train": _parsed(data["train"]), "validation": _parsed(data["validation"]),
        "hyperparameters": Hyperparameters(**hp),
    })


class RemoteJobManager(JobManager):
    """Reads here; submit, cancel and resume in the engine."""

    def __init__(self, settings: Settings, client: EngineClient):
        super().__init__(settings)
        self.client = client

    async def start(self) -> None:
        """Opens the store only: the engine marks a previous server's jobs interrupted."""
        if self.settings.models_dir is None:
            return
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(self.settings.state_dir / "jobs.sqlite")

    async def stop(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    async def submit(self, request: JobRequest) -> JobRecord:
        self.check_new_name(request.name)  # the usual 409 before anything crosses the wire
        result, _ = await self.client.call("job_submit", {"request": job_request_to_dict(request)})
        return self.get(result["id"])

    async def cancel(self, job_id: str) -> JobRecord:
        self.get(job_id)
        result, _ = await self.client.call("job_cancel", {"id": job_id})
        return self.get(result["id"])

    async def resume(self, job_id: str) -> JobRecord:
        self.get(job_id)
        result, _ = await self.client.call("job_resume", {"id": job_id})
        return self.get(result["id"])

    def running(self) -> int:
        return 0  # the engine's

"""Fine-tuning jobs, OpenAI's way: POST/GET /v1/fine_tuning/jobs, a job, its events, cancel, resume.

The job object has OpenAI's shape where it fits (`id`, `object: fine_tuning.job`, `model`,
`fine_tuned_model`, `status` in OpenAI's words, `created_at`, `finished_at`, `hyperparameters`,
`method`, `error`), plus what an embedding job measures: progress, steps, loss and MRR@10 /
recall@1 before and after. Training data comes inline (`training_data`: TSV `query<TAB>passage`
text, JSONL text, or a list of `{"anchor", "positive", "negative"?}`) or, as OpenAI's clients send
it, as an uploaded file's id (`training_file`, POST /v1/files: api/files.py), parsed alike; the
same for `validation_data` / `validation_file`. `method: qlora` is refused
(422, with the reason) where 4-bit training can't run; the Embedding Service's /fine-tune-lora
falls back to LoRA instead (api/fine_tune.py). All of it needs the admin scope.

The result is saved as `--models-dir/<name>` (`suffix`, else `<base>-ft-<8 hex>`), which the
resolver already searches: once the job has succeeded every route serves it by that name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from embedserve.api.compat import service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import Scope, declare
from embedserve.errors import Conflict, InvalidInput, NotReady, WrongTask
from embedserve.models.tasks import Task, detect_kind, task_names
from embedserve.training.data import Parsed, parse_jsonl, parse_pairs
from embedserve.training.intake import JobRequest, check_pairs, default_hyperparameters, qlora_support
from embedserve.training.manager import JobManager
from embedserve.training.store import JobRecord

router = APIRouter(tags=["Fine-tuning"])

# What creating a job can answer: bad name/data (422), unknown base or file (404), a base without embed
# or no --models-dir (400), name taken (409), the cap (429), resolving the base (424/503/504).
CREATES = (400, 404, 409, 422, 424, 429, 503, 504)
JOB = (404, 422, 503)  # reading a job: unknown id, a bad parameter, or training not started yet
STATUS = {
    "pending": "queued", "running": "running", "completed": "succeeded", "failed": "failed",
    "cancelled": "cancelled", "interrupted": "interrupted",
}
JobId = Annotated[str, Path(description="The job's id, as creating it answered.")]


def manager(request: Request) -> JobManager:
    return request.app.state.training


async def resolve_base(request: Request, name: str | None) -> tuple[str, str]:
    """(model id, folder) of the base a client names (the default model when None): a loaded
    model, else resolved under the request rules (--allow-models, never a path); 400 without embed."""
    pool = service(request).pool
    name, model = pool.lookup(name)
    if model is not None:
        model_id, path, tasks = model.id, model.path, model.info.tasks
    elif name is None:
        raise NotReady("no model is loaded yet to fine-tune; retry shortly")
    else:
        resolved = await pool.resolve_request(name)
        kind = await asyncio.to_thread(detect_kind, resolved.path)
        model_id, path, tasks = resolved.id, resolved.path, kind.tasks
    if Task.EMBED not in tasks:
        raise WrongTask(name or model_id, "embeddings, which fine-tuning trains", task_names(tasks))
    return model_id, str(path)


def check_new_model_name(request: Request, name: str) -> str:
    """A name no model has: not under --models-dir, not a live job's, not a loaded model's."""
    manager(request).check_new_name(name)
    if service(request).pool.find(name) is not None:
        raise Conflict(f"a model named '{name}' is loaded already", param="model_name")
    return name


class PairItem(BaseModel):
    anchor: StrictStr
    positive: StrictStr
    negative: StrictStr | None = None


TrainingData = StrictStr | Annotated[list[PairItem], Field(min_length=1)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: StrictInt | None = Field(None, ge=1, le=100)
    batch_size: StrictInt | None = Field(None, ge=1, le=4096)
    learning_rate: float | None = Field(None, gt=0, le=1, description="Absolute; wins over the multiplier.")
    learning_rate_multiplier: float | None = Field(None, gt=0, le=100, description="Times the method's default.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    lora_r: StrictInt | None = Field(None, gt=0, le=1024)
    lora_alpha: StrictInt | None = Field(None, gt=0, le=4096)
    lora_dropout: float | None = Field(None, ge=0, lt=1)
    lora_target_modules: list[StrictStr] | None = Field(None, min_length=1)
    seed: StrictInt | None = Field(None, ge=0)


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr = Field(min_length=1, description="The base model: a served or servable model name.")
    training_data: TrainingData | None = Field(
        None, description="TSV `query<TAB>passage` or JSONL text, or a list of pairs (or `training_file`)."
    )
    training_file: StrictStr | None = Field(
        None, min_length=1, description="An uploaded file's id (POST /v1/files), parsed as `training_data` is."
    )
    validation_data: TrainingData | None = Field(None, description="Held-out pairs; else carved from the data.")
    validation_file: StrictStr | None = Field(
        None, min_length=1, description="An uploaded file's id holding the held-out pairs (or `validation_data`)."
    )
    method: Literal["full", "lora", "qlora"] = "full"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    suffix: StrictStr | None = Field(None, min_length=1, description="The result's model name.")

    @model_validator(mode="after")
    def _one_source_each(self) -> CreateJobRequest:
        if (self.training_data is None) == (self.training_file is None):
            raise ValueError("give the training pairs as 'training_data' or as 'training_file' (one of them)")
        if self.validation_data is not None and self.validation_file is not None:
            raise ValueError("give the validation pairs as 'validation_data' or as 'validation_file', not both")
        return self


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"]
    model: str
    fine_tuned_model: str | None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    created_at: int
    finished_at: int | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    error: JobError | None
    progress: float
    message: str | None
    trained_steps: int
    total_steps: int | None
    epoch: float
    loss: float | None
    metrics: dict[str, dict[str, float] | None]
    training_pairs: int
    validation_pairs: int | None
    ignored_lines: int
    result_files: list[str]


class JobList(BaseModel):
    object: Literal["list"]
    data: list[FineTuningJob]
    has_more: bool


class JobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"]
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: str
    data: dict[str, Any]


class EventList(BaseModel):
    object: Literal["list"]
    data: list[JobEvent]
    has_more: bool


def parse_data(data: str | list[PairItem], what: str) -> Parsed:
    if isinstance(data, str):
        parsed = parse_pairs(data)
    else:
        parsed = parse_jsonl("\n".join(json.dumps(item.model_dump(exclude_none=True)) for item in data))
    return check_pairs(parsed, what)


async def read_data(request: Request, data: str | list[PairItem] | None, file_id: str | None,
                    what: str) -> Parsed | None:
    """Pairs given inline (`<what>_data`) or by an uploaded file's id (`<what>_file`: 404 if unknown)."""
    if file_id is not None:
        return await asyncio.to_thread(manager(request).files.pairs, file_id, f"{what}_file")
    return parse_data(data, f"{what}_data") if data is not None else None


def job_object(job: JobRecord) -> dict[str, Any]:
    hp = job.hyperparameters
    hyper = {k: hp.get(v) for k, v in (("n_epochs", "epochs"), ("batch_size", "batch_size"),
                                        ("learning_rate", "learning_rate"), ("warmup_ratio", "warmup_ratio"))}
    method: dict[str, Any] = {"type": job.method}
    if job.type == "lora":
        method["lora"] = {k: hp.get(f"lora_{k}") for k in ("r", "alpha", "dropout", "target_modules")}
    error = {"code": "training_failed", "message": job.error, "param": None} if job.error else None
    return {
        "id": job.id, "object": "fine_tuning.job", "model": job.base,
        "fine_tuned_model": job.name if job.status == "completed" else None,
        "status": STATUS[job.status], "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "hyperparameters": hyper, "method": method, "error": error, "progress": job.progress,
        "message": job.message, "trained_steps": job.steps, "total_steps": job.total_steps, "epoch": job.epoch,
        "loss": job.loss, "metrics": {"before": job.metrics_before, "after": job.metrics_after},
        "training_pairs": job.train_count, "validation_pairs": job.validation_count,
        "ignored_lines": job.ignored_lines, "result_files": [],
    }


def event_message(type_: str, data: dict[str, Any]) -> str:
    if type_ == "progress":
        total = f"/{data['total_steps']}" if data.get("total_steps") else ""
        loss = f", loss {data['loss']:.4f}" if data.get("loss") is not None else ""
        return f"step {data.get('step', 0)}{total}, epoch {data.get('epoch', 0):.2f}{loss}"
    if type_ == "metrics":
        shown = ", ".join(f"{k} {v:.4f}" for k, v in (data.get("metrics") or {}).items())
        return f"{data.get('stage', 'eval')}: {shown}"
    return data.get("error") or data.get("message") or type_


@router.post(
    "/v1/fine_tuning/jobs", response_model=FineTuningJob, summary="Create a fine-tuning job",
    **declare(Scope.ADMIN, *CREATES, body=True),
)
async def create_job(request: Request, body: CreateJobRequest) -> Any:
    jobs = manager(request)
    jobs.models_dir()
    if body.method == "qlora" and not (support := qlora_support())[0]:
        raise InvalidInput(f"method 'qlora' is not available: {support[1]}; use 'lora'", param="method")
    base_id, base_path = await resolve_base(request, body.model)
    name = body.suffix or f"{base_id.rstrip('/').split('/')[-1]}-ft-{uuid.uuid4().hex[:8]}"
    check_new_model_name(request, name)
    train = await read_data(request, body.training_data, body.training_file, "training")
    validation = await read_data(request, body.validation_data, body.validation_file, "validation")
    assert train is not None  # CreateJobRequest holds one source of training pairs
    hp, given = default_hyperparameters(body.method), body.hyperparameters
    changes = {
        "epochs": given.n_epochs, "batch_size": given.batch_size, "warmup_ratio": given.warmup_ratio,
        "lora_r": given.lora_r, "lora_alpha": given.lora_alpha, "lora_dropout": given.lora_dropout,
        "lora_target_modules": tuple(given.lora_target_modules) if given.lora_target_modules else None,
        "seed": given.seed,
        "learning_rate": given.learning_rate
        or (hp.learning_rate * given.learning_rate_multiplier if given.learning_rate_multiplier else None),
    }
    hp = dataclasses.replace(hp, **{k: v for k, v in changes.items() if v is not None})
    job = await jobs.submit(JobRequest(
        name=name, base_name=base_id, base_path=base_path, method=body.method, train=train, validation=validation,
        hyperparameters=hp, suffix=body.suffix,
    ))
    return OrjsonResponse(job_object(job))


@router.get(
    "/v1/fine_tuning/jobs", response_model=JobList, summary="List fine-tuning jobs, newest first",
    **declare(Scope.ADMIN, 400, 422, 503),
)
async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> Any:
    jobs = manager(request).list(limit=limit + 1)
    return OrjsonResponse(
        {"object": "list", "data": [job_object(j) for j in jobs[:limit]], "has_more": len(jobs) > limit}
    )


@router.get(
    "/v1/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, summary="A fine-tuning job",
    **declare(Scope.ADMIN, 400, *JOB),
)
async def get_job(request: Request, job_id: JobId) -> Any:
    return OrjsonResponse(job_object(manager(request).get(job_id)))


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/events", response_model=EventList,
    summary="A job's events, oldest first: steps, loss, metrics, messages", **declare(Scope.ADMIN, 400, *JOB),
)
async def job_events(request: Request, job_id: JobId, limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> Any:
    events = manager(request).events(job_id, limit=limit + 1)
    data = [
        {
            "object": "fine_tuning.job.event", "id": f"ftevent-{e.id}", "created_at": int(e.created_at),
            "level": "error" if e.type == "failed" else "info", "message": event_message(e.type, e.data),
            "type": e.type, "data": e.data,
        }
        for e in events[-limit:]
    ]
    return OrjsonResponse({"object": "list", "data": data, "has_more": len(events) > limit})


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob,
    summary="Cancel a job (409 once it has finished)", **declare(Scope.ADMIN, 400, 409, *JOB),
)
async def cancel_job(request: Request, job_id: JobId) -> Any:
    return OrjsonResponse(job_object(await manager(request).cancel(job_id)))


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob,
    summary="Resume an interrupted job from its last checkpoint", **declare(Scope.ADMIN, 400, 409, 429, *JOB),
)
async def resume_job(request: Request, job_id: JobId) -> Any:
    return OrjsonResponse(job_object(await manager(request).resume(job_id)))

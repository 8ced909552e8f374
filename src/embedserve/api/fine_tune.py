"""Drop-in for the Embedding Service's fine-tuning routes: POST /fine-tune, POST /fine-tune-lora,
GET /train-status/{job_id}.

Its clients send `{"text_content": "query<TAB>passage\\n...", "model_name": "<result name>"}` and
get `{"job_id", "status": "pending"}` back (`"type"` beside them, as ours says full or lora), then
poll /train-status. The base is the server's default model (`base_model`, ours, names another).
Lines that are not `query<TAB>passage` are ignored and counted in the job's first event; none
valid is a 422 with the count. The requests carry no learning rate or epochs: the measured
defaults of training/defaults.py apply (1 epoch, batch 32, learning rate 5e-5 full / 5e-4 LoRA:
an adapter needs the higher rate to move as far). `use_qlora: true` where 4-bit training
can't run trains plain LoRA and says so in the job's message and events, where the original
queued a QLoRA job whatever the machine. Jobs are shared with /v1/fine_tuning/jobs (admin scope).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from embedserve.api.fine_tuning import CREATES, JOB, JobId, check_new_model_name, manager, resolve_base
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import Scope, declare
from embedserve.training.data import parse_tsv
from embedserve.training.intake import JobRequest, check_name, check_pairs, default_hyperparameters, qlora_support

router = APIRouter(tags=["Embedding Service"])


class FineTuneRequest(BaseModel):
    text_content: StrictStr = Field(description="Training pairs, one `query<TAB>passage` a line.")
    model_name: StrictStr = Field(description="The result's name: a plain name, served under --models-dir once done.")
    base_model: StrictStr | None = Field(None, min_length=1, description="The base model; the default model when omitted.")


class FineTuneLoraRequest(FineTuneRequest):
    r: StrictInt = Field(16, gt=0, le=1024, description="LoRA rank.")
    lora_alpha: StrictInt = Field(32, gt=0, le=4096)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    use_qlora: StrictBool = Field(False, description="4-bit QLoRA where this device supports it, else plain LoRA.")


class FineTuneResponse(BaseModel):
    job_id: str
    status: Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]
    type: Literal["full", "lora"]


class TrainStatus(BaseModel):
    status: Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]
    progress: float = Field(description="0-100.")
    message: str | None
    error: str | None
    steps: int
    epoch: float


async def start_job(request: Request, body: FineTuneRequest, method: str, **hp: Any) -> Any:
    jobs = manager(request)
    jobs.models_dir()
    check_name(body.model_name)
    base_id, base_path = await resolve_base(request, body.base_model)
    check_new_model_name(request, body.model_name)
    train = check_pairs(parse_tsv(body.text_content), "text_content")
    asked, message = None, None
    if method == "qlora" and not (support := qlora_support())[0]:
        asked, method = "qlora", "lora"
        message = f"QLoRA (4-bit) is not supported here ({support[1]}): training plain LoRA instead"
    defaults = dataclasses.replace(default_hyperparameters(method), **hp)
    job = await jobs.submit(JobRequest(
        name=body.model_name, base_name=base_id, base_path=base_path, method=method, train=train,  # type: ignore[arg-type]
        hyperparameters=defaults, asked=asked, message=message,
    ))
    return OrjsonResponse({"job_id": job.id, "status": job.status, "type": job.type})


@router.post(
    "/fine-tune", response_model=FineTuneResponse, summary="Fine-tune the model on query/passage pairs (full)",
    **declare(Scope.ADMIN, *CREATES, body=True),
)
async def fine_tune(request: Request, body: FineTuneRequest) -> Any:
    return await start_job(request, body, "full")


@router.post(
    "/fine-tune-lora", response_model=FineTuneResponse, summary="Fine-tune a LoRA adapter (QLoRA where supported)",
    **declare(Scope.ADMIN, *CREATES, body=True),
)
async def fine_tune_lora(request: Request, body: FineTuneLoraRequest) -> Any:
    return await start_job(
        request, body, "qlora" if body.use_qlora else "lora",
        lora_r=body.r, lora_alpha=body.lora_alpha, lora_dropout=body.lora_dropout,
    )


@router.get(
    "/train-status/{job_id}", response_model=TrainStatus, summary="A fine-tuning job's status",
    **declare(Scope.ADMIN, 400, *JOB),
)
async def train_status(request: Request, job_id: JobId) -> Any:
    job = manager(request).get(job_id)
    return OrjsonResponse({
        "status": job.status, "progress": job.progress, "message": job.message, "error": job.error,
        "steps": job.steps, "epoch": job.epoch,
    })

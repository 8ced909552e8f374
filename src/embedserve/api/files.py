"""Training files, OpenAI's way: POST /v1/files (multipart: `file`, `purpose=fine-tune`), GET
/v1/files, GET /v1/files/{file_id}, DELETE /v1/files/{file_id}.

The subset of OpenAI's Files API that fine-tuning uses: upload a data file, then name its id as
`training_file` / `validation_file` in POST /v1/fine_tuning/jobs (api/fine_tuning.py). Only
purpose `fine-tune` is taken (another is a 422). A file must hold pairs, TSV `query<TAB>passage`
or JSONL `{"anchor", "positive", "negative"?}` (the same parser as inline `training_data`), and be
at most --max-file-bytes (413). Kept under --state-dir (training/files.py), so like every
fine-tuning route these need --models-dir (400 `training_disabled` without) and the admin scope.

The request body may be larger than --max-body-bytes here, up to --max-file-bytes plus the form's
own overhead (`upload_limit`, which api/app.py hands the body reader for this route alone).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from pydantic import BaseModel

from embedserve.api.fine_tuning import manager
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import Scope, declare
from embedserve.settings import Settings
from embedserve.training.files import TrainingFiles
from embedserve.training.store import FileRecord

router = APIRouter(tags=["Fine-tuning"])

FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the `purpose` field around the file
FILE = (404, 422, 503)  # reading a file: unknown id, a bad parameter, or training not started yet
FileId = Annotated[str, Path(description="The file's id, as uploading it answered (`file-...`).")]


def upload_limit(settings: Settings) -> int:
    """The largest body POST /v1/files reads: a file of --max-file-bytes and its form around it."""
    return max(settings.max_body_bytes, settings.max_file_bytes + FORM_OVERHEAD)


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"]
    status: Literal["processed"]


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


def files(request: Request) -> TrainingFiles:
    return manager(request).files


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id, "object": "file", "bytes": record.bytes, "created_at": int(record.created_at),
        "filename": record.filename, "purpose": record.purpose, "status": "processed",
    }


@router.post(
    "/v1/files", response_model=FileObject, summary="Upload a fine-tuning data file (TSV or JSONL pairs)",
    **declare(Scope.ADMIN, 400, 413, 422, 503, body=True),
)
async def upload_file(
    request: Request,
    file: Annotated[UploadFile, File(description="TSV `query<TAB>passage` lines or JSONL pairs, UTF-8.")],
    purpose: Annotated[Literal["fine-tune"], Form(description="Only `fine-tune` is kept here.")],
) -> Any:
    manager(request).models_dir()  # 400 without --models-dir, before anything is written
    record = await asyncio.to_thread(files(request).save, file.file, file.filename or "file", purpose)
    return OrjsonResponse(file_object(record))


@router.get(
    "/v1/files", response_model=FileList, summary="List uploaded files, newest first",
    **declare(Scope.ADMIN, 400, 422, 503),
)
async def list_files(
    request: Request,
    purpose: Annotated[str | None, Query(description="Only files of this purpose.")] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Annotated[Literal["asc", "desc"], Query(description="By upload time.")] = "desc",
    after: Annotated[str | None, Query(description="A file id: list the files after it.")] = None,
) -> Any:
    found = files(request).list(purpose=purpose, limit=limit + 1, newest_first=order == "desc", after=after)
    data = [file_object(record) for record in found[:limit]]
    return OrjsonResponse({
        "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None, "has_more": len(found) > limit,
    })


@router.get(
    "/v1/files/{file_id}", response_model=FileObject, summary="An uploaded file", **declare(Scope.ADMIN, 400, *FILE),
)
async def get_file(request: Request, file_id: FileId) -> Any:
    return OrjsonResponse(file_object(files(request).get(file_id)))


@router.delete(
    "/v1/files/{file_id}", response_model=FileDeleted, summary="Delete an uploaded file (jobs made from it stay)",
    **declare(Scope.ADMIN, 400, *FILE),
)
async def delete_file(request: Request, file_id: FileId) -> Any:
    record = await asyncio.to_thread(files(request).delete, file_id)
    return OrjsonResponse({"id": record.id, "object": "file", "deleted": True})


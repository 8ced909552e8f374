"""Infinity's model listing: GET /models (Infinity serves OpenAI's routes without `/v1`).

Infinity's clients (`infinity_client`, LangChain's and litellm's Infinity providers) read
`GET /models` to find the served model ids. The entries have Infinity's shape: `id`, `stats`,
`object`, `created`, `backend` and `capabilities` (Infinity's words for what a model does:
`embed`, `rerank`, `classify`), plus our own `tasks`. Infinity's `owned_by` is an enum whose only
value is "infinity", which its client checks, so it is left out rather than claimed.
Its OpenAI embeddings route, `POST /embeddings`, is served in api/generator.py, which owns that path.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from embedserve.api.compat import service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import Scope, declare
from embedserve.engine.model_pool import LoadedModel
from embedserve.models.tasks import Task, task_names

router = APIRouter(tags=["Infinity"])


class InfinityModel(BaseModel):
    id: str
    object: str
    created: int
    backend: str
    capabilities: list[str]
    tasks: list[str]
    stats: dict[str, Any]


class InfinityModelList(BaseModel):
    object: str
    data: list[InfinityModel]


def capabilities(model: LoadedModel) -> list[str]:
    """What Infinity would call the model's abilities."""
    tasks = model.info.tasks
    found = []
    if Task.EMBED in tasks:
        found.append("embed")
    if tasks & {Task.SCORE, Task.MULTIVECTOR, Task.EMBED} and (model.info.score_labels or 1) == 1:
        found.append("rerank")  # every model that can score ranks here (engine/ranking.py)
    if Task.SCORE in tasks and (model.info.score_labels or 1) > 1:
        found.append("classify")
    return found


def _entry(model: LoadedModel) -> dict[str, Any]:
    worker = model.worker
    return {
        "id": model.id, "object": "model", "created": int(model.loaded_at), "backend": model.info.backend,
        "capabilities": capabilities(model), "tasks": task_names(model.info.tasks),
        "stats": {"queue_fraction": worker.depth / max(worker.max_queue, 1), "queue_absolute": worker.depth},
    }


@router.get(
    "/models",
    response_model=InfinityModelList,
    summary="List served models (Infinity shape)",
    **declare(Scope.EMBED),
)
async def list_models(request: Request) -> Any:
    return OrjsonResponse({"object": "list", "data": [_entry(m) for m in service(request).pool.models]})

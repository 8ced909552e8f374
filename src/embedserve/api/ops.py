"""Operational routes: liveness, readiness, Prometheus metrics, and the API documentation."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from embedserve import __version__
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import Scope, declare
from embedserve.errors import NotReady

router = APIRouter(tags=["Operations"])

OPENAPI_URL, DOCS_URL, REDOC_URL = "/openapi.json", "/docs", "/redoc"

ServerStatus = Literal["healthy", "loading", "draining", "error", "unavailable"]


class HealthResponse(BaseModel):
    status: ServerStatus
    version: str
    model: str | None  # the default model; None while none is loaded
    models: list[str]
    model_status: dict[str, Literal["ready", "error"]]
    model_loaded: bool  # the Embeddings Generator's keys: whether a model serves, and seconds since start
    uptime: float


class ReadyResponse(BaseModel):
    status: Literal["ready"]


def server_status(request: Request) -> str:
    """healthy | loading | draining | error (a start-up load failed, or a model's loop died and is
    restarting) | unavailable (no model is loaded: every model route answers 503 until one is)."""
    state = request.app.state
    if state.draining:
        return "draining"
    if state.load_error:
        return "error"
    if not state.ready:
        return "loading"
    models = state.service.pool.models
    if any(m.worker.failure is not None for m in models):
        return "error"
    return "healthy" if models else "unavailable"


@router.get(
    "/health",
    response_model=HealthResponse,
    summary="Liveness, and the state of the server and of each model",
    **declare(Scope.OPEN),
)
async def health(request: Request) -> Any:
    service = request.app.state.service
    default = service.pool.default_model
    return OrjsonResponse(
        {
            "status": server_status(request),
            "version": __version__,
            "model": default.id if default else None,
            "models": [m.id for m in service.pool.models],
            "model_status": {m.id: "error" if m.worker.failure is not None else "ready" for m in service.pool.models},
            "model_loaded": default is not None,
            "uptime": round(time.monotonic() - request.app.state.started_at, 3),
        }
    )


@router.get(
    "/ready",
    response_model=ReadyResponse,
    summary="503 until a model serves, and while any is failing or the server drains",
    **declare(Scope.OPEN, 503),
)
async def ready(request: Request) -> Any:
    require_healthy(request)
    return OrjsonResponse({"status": "ready"})


def require_healthy(request: Request) -> None:
    """503 unless the server is healthy (/ready, and KServe's /v2/health/ready)."""
    status = server_status(request)
    if status != "healthy":
        # The load error itself stays in the server log: it names server paths, and /ready is open.
        detail = ": a start-up model failed to load; the server log says why" if request.app.state.load_error else ""
        raise NotReady(f"server is {status}{detail}")


_METRICS = declare(Scope.METRICS)
# Prometheus's text format, not JSON; its errors (401/403 with --protect-metrics) stay JSON.
_METRICS["responses"][200] = {
    "description": "Prometheus text exposition format (`text/plain; version=0.0.4`)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, **_METRICS)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(OPENAPI_URL, include_in_schema=False, **declare(Scope.EMBED))
async def openapi(request: Request) -> Any:
    return OrjsonResponse(request.app.openapi())


@router.get(DOCS_URL, include_in_schema=False, response_class=HTMLResponse, **declare(Scope.EMBED))
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=_root(request) + OPENAPI_URL, title=f"{request.app.title} - Swagger UI")


@router.get(REDOC_URL, include_in_schema=False, response_class=HTMLResponse, **declare(Scope.EMBED))
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=_root(request) + OPENAPI_URL, title=f"{request.app.title} - ReDoc")


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")

"""Operational routes: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from embedserve import __version__
from embedserve.api.responses import OrjsonResponse
from embedserve.errors import NotReady

router = APIRouter(tags=["Operations"])


def server_status(request: Request) -> str:
    state = request.app.state
    if state.draining:
        return "draining"
    if state.load_error:
        return "error"
    return "healthy" if state.ready else "loading"


@router.get("/health", summary="Liveness and loaded models")
async def health(request: Request) -> Any:
    service = request.app.state.service
    default = service.default_model
    return OrjsonResponse(
        {
            "status": server_status(request),
            "version": __version__,
            "model": default.id if default else None,
            "models": [m.id for m in service.models],
        }
    )


@router.get("/ready", summary="503 until every model is loaded, and while draining")
async def ready(request: Request) -> Any:
    status = server_status(request)
    if status != "healthy":
        detail = f": {request.app.state.load_error}" if status == "error" else ""
        raise NotReady(f"server is {status}{detail}")
    return OrjsonResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

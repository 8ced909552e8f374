"""What each route declares (its auth scope, the errors it documents) and which route a request is for.

A route declares its scope where it is declared:

    @router.post("/v1/embeddings", **declare(Scope.EMBED, 404, 413, 422, 429, 503))

`declare` keeps the scope on the route (as the OpenAPI extension `x-embedserve-scope`) and
documents each error status with OpenAI's error shape, or with Text Embeddings Inference's
(`errors=ErrorShape.TEI`, kept as `x-embedserve-errors`): api/errors.py reads the matched route's
shape back, so every error of a TEI route (validation, auth, body limits, full queue) has TEI's.
Middleware finds the request's route in the app's route table (`RouteTable`) before anything
else runs and reads the scope back (`route_scope`), so one check holds for every request, whether
FastAPI or the embeddings lane answers it, and behind a reverse proxy's `root_path` too
(Starlette strips it when matching).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import BaseRoute, Match
from starlette.types import Scope as AsgiScope

from embedserve.models.tasks import Task

SCOPE_KEY = "x-embedserve-scope"
TASKS_KEY = "x-embedserve-tasks"
ERRORS_KEY = "x-embedserve-errors"
ROUTE = "embedserve.route"  # where the matched route is kept in the ASGI scope


class Scope(StrEnum):
    """What a key must hold to call a route."""

    OPEN = "open"  # never asks for a key: liveness and readiness probes
    METRICS = "metrics"  # open unless --protect-metrics, then any valid key
    EMBED = "embed"  # every inference route of every API family, and reading about models
    ADMIN = "admin"  # changes server state: loading and unloading models


class ErrorShape(StrEnum):
    """Which error body a route answers with."""

    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}}: every route of ours
    TEI = "tei"  # {"error": "...", "error_type": "Validation"}: Text Embeddings Inference's routes
    EITHER = "either"  # a path several APIs share (/rerank): OpenAI's unless the body is TEI's (api/errors.py)
    DROP_IN = "drop_in"  # OpenAI's plus FastAPI's `detail` (the message): the routes of the servers we replace
    KSERVE = "kserve"  # {"error": "..."}: KServe's V1 and Open Inference Protocol V2 routes (api/kserve.py)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, which every error of this server has."""

    error: ErrorDetail


class DropInErrorResponse(ErrorResponse):
    """OpenAI's error shape plus `detail`, the message where FastAPI's `HTTPException` put it: the
    servers whose routes we serve answered `{"detail": "..."}`, and their clients read it there."""

    detail: str


class TeiErrorResponse(BaseModel):
    """Text Embeddings Inference's error shape (its `ErrorResponse`): the message, and the kind as
    TEI names it. Statuses are ours; the kind follows them (api/errors.py `tei_error_type`)."""

    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


class KServeErrorResponse(BaseModel):
    """KServe's error shape, V1 and V2 alike (the Open Inference Protocol's `{"error": <message>}`)."""

    error: str


_ERROR_MODELS: dict[ErrorShape, Any] = {
    ErrorShape.OPENAI: ErrorResponse,
    ErrorShape.TEI: TeiErrorResponse,
    ErrorShape.EITHER: ErrorResponse | TeiErrorResponse,  # documented as anyOf
    ErrorShape.DROP_IN: DropInErrorResponse,
    ErrorShape.KSERVE: KServeErrorResponse,
}


_DESCRIPTIONS = {
    400: "A parameter the model can't honour, or a model without the task this route needs (`model_task_unsupported`)",
    401: "No API key, or an unknown one (`invalid_api_key`, with `WWW-Authenticate: Bearer`)",
    403: "The API key lacks this route's scope (`insufficient_scope`)",
    404: "No such model here (`model_not_found`)",
    408: "The request body did not arrive within --body-timeout",
    409: "The request conflicts with the server's state: a model name already taken, a job already finished",
    413: "Body over --max-body-bytes (a file over --max-file-bytes), or tokens over --max-request-tokens",
    422: "The body or a parameter is malformed, or the inputs can't be embedded",
    424: "The model was found but could not be loaded (`model_load_failed`)",
    429: "The model's queue is full (`queue_full`); retry after `Retry-After` seconds",
    500: "Inference failed for the batch this request was in (`inference_failed`); other requests are unaffected",
    503: "No model can answer yet: loading, unloaded, restarting, draining or timed out; retry after `Retry-After`",
    504: "The Hugging Face Hub did not answer within --hub-timeout",
    507: "The model would take request-loaded models past --max-models-memory-mib",
}
_BODY_ERRORS = (408, 413)  # the body reader's answers, on every route that takes a body
SERVED = (404, 413, 422, 429, 500, 503)  # what a route that embeds with a loaded model can answer
LOADS = (*SERVED, 424, 504, 507)  # ... and one that may load the model it names first
LOADING = (404, 422, 424, 503, 504, 507)  # what loading a model by name can answer (POST /model/load)
DENSE_TASK = (Task.EMBED,)  # what every dense embedding route needs of its model


def declare(
    scope: Scope, *statuses: int, body: bool = False, tasks: Sequence[Task] = (), errors: ErrorShape = ErrorShape.OPENAI
) -> dict[str, Any]:
    """Keyword arguments for a route decorator: its scope, the model tasks it needs, its error
    shape and its documented error answers.

    401/403 come with any scope that can ask for a key; `body=True` adds the body reader's 408/413;
    `tasks` (kept as `x-embedserve-tasks`) adds the 400 a model without them gets.
    """
    codes = set(statuses)
    if scope is not Scope.OPEN:
        codes |= {401, 403}
    if body:
        codes |= set(_BODY_ERRORS)
    extra: dict[str, Any] = {SCOPE_KEY: scope.value}
    if tasks:
        codes.add(400)
        extra[TASKS_KEY] = [task.value for task in tasks]
    if errors is not ErrorShape.OPENAI:
        extra[ERRORS_KEY] = errors.value
    model = _ERROR_MODELS[errors]
    responses = {code: {"model": model, "description": _DESCRIPTIONS[code]} for code in sorted(codes)}
    return {"openapi_extra": extra, "responses": responses}


def route_tasks(route: BaseRoute | None) -> list[str]:
    """The model tasks a route declared it needs (empty: none)."""
    extra = getattr(route, "openapi_extra", None) or {}
    return list(extra.get(TASKS_KEY, []))


def route_errors(route: BaseRoute | None) -> ErrorShape:
    """The error shape a route declared (OpenAI's when it declared none, or no route matched)."""
    extra = getattr(route, "openapi_extra", None) or {}
    return ErrorShape(extra.get(ERRORS_KEY, ErrorShape.OPENAI.value))


class _ModelName(Convertor[str]):
    """A model name in a path, '/' included (`org/model`) as `{model:path}` takes it, except one
    that ends in the suffix of another route on the same prefix: KServe's routes share theirs with
    OpenAI's model card (`/v1/models/{m}` vs `/v1/models/{m}:predict`) and with each other
    (`/v2/models/{m}` vs `/v2/models/{m}/infer`). Without the exclusion, a GET of `.../infer`
    would read as model `m/infer` (404, not 405) and a 405's `Allow` would list both routes' methods."""

    def __init__(self, excluded: str | None = None, least: str = "*"):
        # Any character, a newline too (`path`'s `.*` stops at one): a bad name is the route's own 404,
        # in its own error shape, never "no route" or a slash redirect onto a neighbouring route.
        char = r"[\s\S]" if excluded is None else rf"(?:(?!{excluded}$)[\s\S])"
        self.regex = char + least

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# `{model:openai_model}`: GET /v1/models/{model} (api/openai.py); `{model:v2_model}`: GET /v2/models/{model}
register_url_convertor("openai_model", _ModelName(":predict"))
register_url_convertor("v2_model", _ModelName("/(?:infer|ready)", "+"))  # GET /v2/models (no name) is no route
register_url_convertor("model_name", _ModelName())  # `{model:model_name}`: :predict, .../infer and .../ready


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>` (or the bare key)"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
}


def document_security(schema: dict[str, Any], settings: Any, keys_enabled: bool) -> dict[str, Any]:
    """The OpenAPI schema as this server runs: with keys, each guarded operation lists the
    key schemes (and keeps its 401/403); without keys, nothing asks for one."""
    guarded = {Scope.EMBED.value, Scope.ADMIN.value} | ({Scope.METRICS.value} if settings.protect_metrics else set())
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            if keys_enabled and operation.get(SCOPE_KEY) in guarded:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            else:
                for status in ("401", "403"):
                    operation.get("responses", {}).pop(status, None)
    if keys_enabled:
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    return schema


def route_scope(route: BaseRoute | None) -> Scope | None:
    """The scope a route declared, or None when it declared none (or no route matched)."""
    extra = getattr(route, "openapi_extra", None) or {}
    value = extra.get(SCOPE_KEY)
    return Scope(value) if value is not None else None


class RouteTable:
    """Finds a request's route the way Starlette's router will: a full match (path and method)
    first, else a path-only match (which FastAPI answers 405). Static paths are looked up in a
    dict; only parametrised ones (`/v1/models/{model:openai_model}`) are matched one by one."""

    def __init__(self, routes: list[BaseRoute]):
        self.routes = routes
        self._static: dict[tuple[str, str], BaseRoute] = {}
        self._static_paths: dict[str, BaseRoute] = {}
        self._dynamic: list[BaseRoute] = []
        for route in routes:
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if path is None or "{" in path or methods is None:
                self._dynamic.append(route)
                continue
            for method in methods:
                self._static.setdefault((method, path), route)
            self._static_paths.setdefault(path, route)

    def methods_for(self, scope: AsgiScope) -> set[str]:
        """Every method some route answers on this request's path (a 405's `Allow`)."""
        methods: set[str] = set()
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        return methods

    def match(self, scope: AsgiScope) -> BaseRoute | None:
        path = _route_path(scope)
        found = self._static.get((scope["method"], path))
        if found is not None:
            return found
        partial = self._static_paths.get(path)
        for route in self._dynamic:
            result, _ = route.matches(scope)
            if result is Match.FULL:
                return route
            if result is Match.PARTIAL and partial is None:
                partial = route
        return partial


def _route_path(scope: AsgiScope) -> str:
    """The path the app's routes see: without the reverse proxy's `root_path` prefix (as Starlette strips it)."""
    path, root = scope["path"], scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path

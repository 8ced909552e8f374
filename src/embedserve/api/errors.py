"""The one place where exceptions become HTTP statuses and error JSON.

The body has OpenAI's shape (with FastAPI's `detail` beside it on the drop-in routes of the servers
we replace, `ErrorShape.DROP_IN`), or Text Embeddings Inference's (`{"error", "error_type"}`) on a route
that declares it (api/routing.py `declare(..., errors=ErrorShape.TEI)`), or KServe's (`{"error"}`, ErrorShape.KSERVE): `error_content` reads the
shape from the request's matched route, kept in the ASGI scope, so FastAPI's handlers below and the
middleware that answers before any route runs (api/middleware.py `send_error`: keys, full queue,
body limits) give one route one shape. A route several APIs share (/rerank) declares `EITHER` and
calls `use_tei_errors` once it knows the body is TEI's.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedserve.api.responses import OrjsonResponse, error_body, renderable
from embedserve.api.routing import ROUTE, ErrorShape, route_errors
from embedserve.errors import EmbedServeError

log = logging.getLogger(__name__)

_FASTAPI_BODY_ERROR = "There was an error parsing the body"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
SHAPE = "embedserve.error_shape"  # ASGI scope: the shape a route chose for this request (use_tei_errors)


def tei_error_type(status: int) -> str:
    """TEI's name for an error of this status. Our statuses stay (TEI answers some of these with
    another: 413 for a batch too large, 424 for any inference failure); only the kind is TEI's."""
    if status == 429:
        return "Overloaded"
    if status in (503, 504):
        return "Unhealthy"  # passes: loading, restarting, draining, timed out, the Hub slow
    if status >= 500 or status == 424:
        return "Backend"
    return "Validation"  # TEI has no kind for a key (its 401 has no body) or a missing model


def error_shape(scope: MutableMapping[str, Any] | None) -> ErrorShape:
    if scope is None:
        return ErrorShape.OPENAI
    chosen = scope.get(SHAPE) or route_errors(scope.get(ROUTE))
    return ErrorShape.OPENAI if chosen is ErrorShape.EITHER else chosen


def use_tei_errors(request: Request) -> None:
    """From here on, this request's errors have TEI's shape (a shared path given TEI's body)."""
    request.scope[SHAPE] = ErrorShape.TEI


def error_content(scope, status: int, message: str, type_: str, *, param=None, code=None) -> dict:
    """The error body for a request (`scope`: its ASGI scope; None: no route, OpenAI's shape)."""
    shape = error_shape(scope)
    if shape is ErrorShape.TEI:
        return {"error": renderable(message), "error_type": tei_error_type(status)}
    if shape is ErrorShape.KSERVE:
        return {"error": renderable(message)}
    body = error_body(message, type_, param=param, code=code)
    if shape is ErrorShape.DROP_IN:
        body["detail"] = body["error"]["message"]
    return body


def error_response(status: int, message: str, type_: str, *, param=None, code=None, headers=None, scope=None):
    content = error_content(scope, status, message, type_, param=param, code=code)
    return OrjsonResponse(content, status_code=status, headers=headers)


def domain_error_response(exc: EmbedServeError, scope=None) -> OrjsonResponse:
    """The response for one of our own errors (also used by api/embeddings_lane.py)."""
    if exc.status >= 500 and exc.retry_after is None:  # a 503/504 that passes is expected, not an error
        log.error("request failed: %s", exc.message)
    return error_response(
        exc.status, exc.message, exc.type, param=exc.param, code=exc.code, headers=exc.headers(), scope=scope
    )


def _location(loc: tuple) -> str:
    # Only ints are list indices: a map key such as "123" (POST /embedding ids) stays a key.
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    where = _location(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "value_error" and "error" in first.get("ctx", {}):
        msg = str(first["ctx"]["error"])
    if first.get("type") == "missing":
        message = f"'{where}' is required" if where else "request body is required"
    elif where:
        message = f"'{where}': {msg}"
    else:
        message = f"request body: {msg}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message, where or None


def allowed_methods(request: Request) -> str | None:
    """Every method the request's path answers to, for a 405's `Allow` (None when no route
    matches). Starlette's own `Allow` lists only the first route on the path, and /v1/encode is
    two routes, GET and POST."""
    return ", ".join(sorted(request.app.state.routes.methods_for(request.scope))) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EmbedServeError)
    async def _domain(request: Request, exc: EmbedServeError):
        return domain_error_response(exc, request.scope)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return error_response(
            422, message, "invalid_request_error", param=param, code="invalid_request", scope=request.scope
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        form = request.headers.get("content-type", "").lower().startswith("multipart/")
        if exc.status_code == 400 and (message == _FASTAPI_BODY_ERROR or form):
            # FastAPI's own 400 for bodies json.loads can't take (not UTF-8, too deep, huge ints), or
            # Starlette's for a multipart form that does not parse (POST /v1/files): the same client
            # error as any other malformed body, so the same 422.
            if form:
                why = "" if message == _FASTAPI_BODY_ERROR else f": {message}"
                message = f"request body is not a valid multipart form{why}"
            else:
                message = "request body is not valid JSON"
            return error_response(422, message, "invalid_request_error", code="invalid_request", scope=request.scope)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route for {request.method} {request.url.path}"
        headers = exc.headers
        if exc.status_code == 405 and (allow := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allow}
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(
            exc.status_code, message, type_, code=_HTTP_CODES.get(exc.status_code), headers=headers, scope=request.scope
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", "server_error", code="internal_error", scope=request.scope)

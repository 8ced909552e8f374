"""A short path for well-formed POST /v1/embeddings requests, past FastAPI's per-request work.

Why: under concurrent single-sentence traffic the event loop is a bottleneck, and FastAPI's
request handling (dependency solving, body parsing with the standard json module, the
endpoint's exception and context wrappers) cost ~150 us of CPU per request here, more than
the engine's own per-request work (measured in-process, fake backend: ~340 us per request
through the whole app, ~100 us for the same parse-validate-embed-serialise done directly).

What: the lane sits inside the request-id/metrics/log, CORS and body-limit middleware, so
those apply as to any request. It answers only a request it fully understands: a JSON
content type, a body orjson parses, and a body the route's own request model accepts. It
then runs the route's own code (`embeddings_payload`) and maps our errors with the same
function as FastAPI's handler. Anything else (another content type, JSON orjson refuses, a
body the model rejects) goes on to FastAPI untouched, which answers it exactly as it always
has, so the lane changes speed, never answers (tests/unit/api/test_embeddings_lane.py).
Anything that must hold for every request (authentication, say) therefore belongs in
middleware outside the lane, not in FastAPI dependencies, which the lane does not run. The
lane engages on the route RequestContextMiddleware found for the request in the route table
(so also behind a reverse proxy's root_path), never on a raw path string.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from embedserve.api.errors import domain_error_response
from embedserve.api.middleware import header, read_body, replay_body
from embedserve.api.openai import EmbeddingRequest, embeddings_payload
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import ROUTE
from embedserve.errors import EmbedServeError


class EmbeddingsLane:
    def __init__(self, app: ASGIApp, *, state: State, route: BaseRoute):
        self.app = app
        self.state = state
        self.route = route  # the FastAPI route it stands in for: metrics and logs name it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(ROUTE) is not self.route or scope["method"] != "POST" or not _json(scope):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive) or b""  # no limit here: BodyMiddleware, outside, applied it
        request = _parse(body)
        if request is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        scope["route"] = self.route
        try:
            response = OrjsonResponse(await embeddings_payload(self.state.service, request))
        except EmbedServeError as exc:
            response = domain_error_response(exc)
        await response(scope, receive, send)


def _json(scope: Scope) -> bool:
    """A JSON content type, as FastAPI reads it: application/json or application/*+json."""
    media = header(scope, b"content-type").split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def _parse(body: bytes) -> EmbeddingRequest | None:
    """The validated request, or None when FastAPI should decide what to answer."""
    try:
        return EmbeddingRequest.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None

"""The 429 of a full queue, answered by the HTTP protocol itself, before any ASGI machinery runs.

Under a storm of clients that retry at once (wrk, most load tests, many scripts), nearly every
request is a refusal, and each refusal went through the whole ASGI path: a task, uvicorn's
request cycle, FastAPI and Starlette's wrappers and our five middlewares, for a response that
is the same bytes every time. Profiled on one core (256 connections retrying at once,
`--max-queue 8`), that path was a third of the event loop's time, time the admitted requests'
batches waited for. `FastRefusal.answer` is called by the protocol (server.py) when a request's
headers are complete and returns the whole response, or None to take the usual path. It answers
only what the usual path would answer with the same 429, and leaves everything else to it:

* a route that queues model work (declares 429), matched by the same route table, while every
  loaded model's queue is full (the same check as QueueFullMiddleware);
* with API keys on, a key with the `embed` scope (else the usual path's 401/403 comes first);
* no `Origin` header (a browser's request gets the CORS headers from the usual path).

The answer is the usual one: the route's error shape, Retry-After and retry-after-ms, an
X-Request-Id (the client's, else a new one), counted in /metrics and in the periodic rejection
log line. The request's body, if any, is then read and dropped by the protocol.

"Full" counts the requests already let through: when a batch ends and its places free up, every
connection whose request is parsed in that same turn of the event loop would see room, though
only as many as there are places can be admitted; the rest would be refused later, the slow way.
So each request let through on a queueing route holds a `Gate` until QueueFullMiddleware (or its
end, whichever comes first) sees it, and the protocol refuses once those outnumber the room.
"""

from __future__ import annotations

import time

import orjson

from embedserve.api.auth import presented_key
from embedserve.api.errors import error_content
from embedserve.api.middleware import new_request_id
from embedserve.api.routing import ROUTE, RouteTable, Scope as RouteScope
from embedserve.errors import Overloaded

STATUS_LINE = b"HTTP/1.1 429 Too Many Requests\r\n"


class Gate:
    """A request let through to a queueing route, not yet seen by QueueFullMiddleware."""

    __slots__ = ("owner", "open")

    def __init__(self, owner: FastRefusal) -> None:
        self.owner = owner
        self.open = True
        owner.in_transit += 1

    def passed(self) -> None:
        """Seen by the app, or ended: no longer counted (once, whoever calls first)."""
        if self.open:
            self.open = False
            self.owner.in_transit -= 1


class FastRefusal:
    def __init__(self, state) -> None:
        """`state`: the app's state (service, keys, metrics, routes, rejection summary)."""
        self.state = state
        self.routes: RouteTable = state.routes
        self.in_transit = 0  # open Gates
        self._bodies: dict[tuple[int, str], bytes] = {}  # (route, message) -> the error body

    def answer(self, method: str, path: str, root_path: str, headers: list[tuple[bytes, bytes]],
               default_headers: list[tuple[bytes, bytes]]) -> bytes | Gate | None:
        """The whole 429 response for this request; or a Gate for a request let through to a route
        that queues (the protocol puts it in the scope); or None: not a queueing route, or no queue
        whose room is known here (no model loaded, or an --api-processes front-end): the app decides."""
        scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": headers}
        route = self.routes.match(scope)
        if route is None or 429 not in (getattr(route, "responses", None) or ()):
            return None
        service = self.state.service
        room = service.queue_room()
        if room is None:
            return None
        if room > self.in_transit:
            return Gate(self)
        request_id = ""
        for name, value in headers:
            if name == b"origin":
                return Gate(self)
            if name == b"x-request-id" and not request_id:
                request_id = value.decode("latin-1")[:128]
        keys = self.state.keys
        if keys.enabled:
            presented = presented_key(scope)
            scopes = keys.scopes_for(presented) if presented is not None else None
            if not scopes or RouteScope.EMBED not in scopes:
                return Gate(self)  # the usual path's 401 or 403 comes first
        refusal = service.overloaded()
        body = self._body(route, refusal)
        head = [STATUS_LINE]
        for name, value in default_headers:
            head += [name, b": ", value, b"\r\n"]
        for name, value in refusal.headers().items():
            head += [name.lower().encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n\r\n"
            % (len(body), (request_id or new_request_id()).encode("latin-1"))
        )
        self.state.metrics.http_request(route.path, method, 429, 0.0)
        self.state.rejections.add(time.monotonic())
        return b"".join(head) + body

    def _body(self, route, refusal: Overloaded) -> bytes:
        key = (id(route), refusal.message)
        body = self._bodies.get(key)
        if body is None:
            if len(self._bodies) > 256:  # messages name models and counts: keep the cache small
                self._bodies.clear()
            content = error_content({ROUTE: route}, 429, refusal.message, refusal.type, code=refusal.code)
            body = self._bodies[key] = orjson.dumps(content)
        return body

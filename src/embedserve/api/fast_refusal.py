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

After such a 429 the protocol stops reading that connection for `--refusal-pause` seconds
(`ReadHolds`). The 429 itself goes out at once; a client that honours Retry-After never notices.
A client that retries at once has its retry wait in the socket buffer meanwhile instead of being
refused again straight away: without that, the refusal rate is set by how fast the clients
resend (8-11k/s from 248 connections on one core), and every refusal is a turn of the event loop
that the admitted requests' batches wait behind, and CPU their inference thread shares. Each time
a request leaves a queue, the connection held longest is read at once (`release_next`): its retry
is in already and takes the freed place, so holding clients back never leaves the engine idle.

"Full" counts the requests already let through: when a batch ends and its places free up, every
connection whose request is parsed in that same turn of the event loop would see room, though
only as many as there are places can be admitted; the rest would be refused later, the slow way.
So each request let through on a queueing route holds a `Gate` until QueueFullMiddleware (or its
end, whichever comes first) sees it, and the protocol refuses once those outnumber the room.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

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


class ReadHolds:
    """Connections not read for `seconds` after a protocol 429, resumed in the order they were held.

    The pause is the same for every connection, so the held ones form a queue by due time and one
    timer at a time serves them all (a timer per refusal would cost the loop more than it saves)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._held: deque[tuple[float, object, asyncio.Transport]] = deque()  # (due, flow control, transport)
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, loop: asyncio.AbstractEventLoop, flow, transport: asyncio.Transport) -> None:
        """Stop reading through `flow` (uvicorn's FlowControl, which the protocol and the request
        cycle also pause and resume through, so none of them resumes what another paused)."""
        if self.seconds <= 0:
            return
        flow.pause_reading()
        due = loop.time() + self.seconds
        self._held.append((due, flow, transport))
        if self._timer is None:
            self._timer = loop.call_at(due, self._release, loop)

    def release_next(self) -> None:
        """A place in a queue came free: read the connection held longest now, not at its due time.
        Its retry is most likely in already, so the place is taken in the loop's next turn instead of
        staying empty until some hold ends (with every refused connection held, that can be most of
        `seconds`, and the engine idles meanwhile)."""
        while self._held and not self._resume_oldest():
            pass

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        held, now = self._held, loop.time()
        while held and held[0][0] <= now:
            self._resume_oldest()
        if held:
            self._timer = loop.call_at(held[0][0], self._release, loop)

    def _resume_oldest(self) -> bool:
        """Stop holding the connection held longest; False if it had closed meanwhile (nothing to read)."""
        _, flow, transport = self._held.popleft()
        if transport.is_closing():
            return False
        flow.resume_reading()
        return True


class FastRefusal:
    def __init__(self, state, pause: float = 0.0) -> None:
        """`state`: the app's state (service, keys, metrics, routes, rejection summary); `pause`:
        seconds a connection is not read after its 429 (--refusal-pause)."""
        self.state = state
        self.holds = ReadHolds(pause)
        if pause > 0:
            state.service.when_room_frees(self.holds.release_next)
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

"""Plain ASGI middleware (not BaseHTTPMiddleware: these run on every request and must be cheap).

Outermost first:
RequestContextMiddleware: finds the request's route (api/routing.py), request id, access log,
HTTP metrics; a full queue's 429s are summed up in one log line every few seconds, not one each.
CORS, then AuthMiddleware (api/auth.py): keys and scopes, before any body is read.
QueueFullMiddleware: a 429 before the body is read while every model's queue is full.
BodyMiddleware (api/exchange.py): the body, and the client's presence while the request runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserve.api.errors import error_content
from embedserve.api.responses import dumps
from embedserve.api.routing import ROUTE, RouteTable
from embedserve.errors import EmbedServeError
from embedserve.metrics import Metrics

access_log = logging.getLogger("embedserve.access")

# Request ids: a random per-process prefix and a counter. uuid4() reads os.urandom on every
# call, which profiling showed as ~9% of the event loop's time under single-sentence traffic.
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)

CLIENT_GONE = "embedserve.client_gone"  # set in the ASGI scope when the client left mid-request
RESPONDING = "embedserve.responding"  # set in the ASGI scope once the response has started
GATE = "embedserve.gate"  # a request let through the protocol's full-queue check (api/fast_refusal.py)
CLIENT_CLOSED_STATUS = 499  # nginx's code for it, in metrics and the access log
REJECTION_SUMMARY_SECONDS = 10.0


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


class RejectionSummary:
    """Counts 429s and logs one line per period. Under overload a line per rejected request cost
    the event loop time the admitted requests needed (and wrote ~1 MB/s of log)."""

    def __init__(self, period: float = REJECTION_SUMMARY_SECONDS):
        self.period = period
        self.count = 0
        self.since = time.monotonic()

    def add(self, now: float) -> None:
        self.count += 1
        self.report(now)

    def report(self, now: float) -> None:
        if self.count and now - self.since >= self.period:
            access_log.warning(
                "rejected %d requests with 429 (queue full) in the last %.0f s",
                self.count, now - self.since, extra={"status": 429, "rejected": self.count},
            )
            self.count = 0
            self.since = now
        elif not self.count:
            self.since = now


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: RouteTable, rejections: RejectionSummary):
        """`rejections`: the app's one summary of 429s (the protocol's fast 429s count there too)."""
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.rejections = rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = scope[ROUTE] = self.routes.match(scope)
        request_id = header(scope, b"x-request-id").decode("latin-1")[:128] or new_request_id()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                scope[RESPONDING] = True
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope.get(CLIENT_GONE):
                status = CLIENT_CLOSED_STATUS
            seconds = time.perf_counter() - started
            self.metrics.http_request(getattr(route, "path", None) or "unmatched", scope["method"], status, seconds)
            now = time.monotonic()
            if status == 429:
                self.rejections.add(now)
            else:
                self.rejections.report(now)
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"request_id": request_id, "status": status, "ms": round(seconds * 1000, 2)},
                )


class QueueFullMiddleware:
    """Refuses a request for a route that queues model work (one that declares 429) before its body
    is read, while every loaded model's queue is full. Under overload most requests are refused;
    each one refused before the body is read, parsed and validated leaves the event loop's time
    to the requests that were admitted (whose every step waits its turn behind the refusals)."""

    def __init__(self, app: ASGIApp, *, service):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and 429 in (getattr(scope.get(ROUTE), "responses", None) or ()):
            gate = scope.get(GATE)  # let through by the protocol's own check (api/fast_refusal.py)
            if gate is not None:
                gate.passed()
            refusal = self.service.all_queues_full()
            if refusal is not None:
                await send_error(send, refusal, scope=scope)
                return
        await self.app(scope, receive, send)


async def send_error(send: Send, exc: EmbedServeError, *, close: bool = False, scope: Scope | None = None) -> None:
    """Answer with one of our errors straight from middleware (no FastAPI below it), in the shape
    the request's route declares (`scope`)."""
    body = dumps(error_content(scope, exc.status, exc.message, exc.type, param=exc.param, code=exc.code))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for name, value in (exc.headers() or {}).items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


def header(scope: Scope, name: bytes) -> bytes:
    """The first value of a request header (lower-case name), or b"" when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


async def read_body(receive: Receive, *, limit: int | None = None) -> bytes | None:
    """The whole request body, or None as soon as it grows past `limit`.

    Raises ClientDisconnected when the client leaves before the body is complete.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives `body` once, as one message, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

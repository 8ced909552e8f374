"""BodyMiddleware: the request's body, and its client's presence while the request runs.

It reads the whole body first: 413 past --max-body-bytes (declared or streamed; a route given its
own limit in `route_limits`, POST /v1/files, past that), 408 when it
takes longer than --body-timeout (a client trickling its body can't hold a request open), and
nothing at all when the client disconnects before its body is complete (a cut-short body never
runs). Then it replays the body to the app and, once the request has run WATCH_AFTER seconds,
watches for the client's next message, which can only be `http.disconnect`: if the client
leaves before the response has started, the request's task is cancelled, so its inputs still
waiting in a model's queue are dropped before they are computed (engine/worker.py skips requests
whose future is done) and its queue slot is freed. Counted as 499 (RequestContextMiddleware).

Both jobs share one timer per request (`_Exchange`): most requests are answered before it fires,
so they pay one `call_later` and no task; the body deadline and the disconnect watcher cost only
the requests that last. (An `asyncio.timeout` for the body plus a watcher task from the start
cost ~20 us of the event loop per request.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserve.api.middleware import (
    CLIENT_GONE,
    RESPONDING,
    ClientDisconnected,
    header,
    read_body,
    replay_body,
    send_error,
)
from embedserve.api.routing import ROUTE
from embedserve.errors import BodyTimeout, PayloadTooLarge

WATCH_AFTER = 0.05  # seconds a request runs before the disconnect of its client is watched for


class _Exchange:
    """One request's timer: first at WATCH_AFTER, then, while the body is still coming, at its deadline."""

    __slots__ = ("scope", "receive", "task", "loop", "reading", "ticked", "body_deadline", "body_expired",
                 "watcher", "timer")

    def __init__(self, scope: Scope, receive: Receive, body_timeout: float):
        self.scope, self.receive = scope, receive
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.reading = True
        self.ticked = False
        self.body_deadline = self.loop.time() + body_timeout
        self.body_expired = False
        self.watcher: asyncio.Task | None = None
        self.timer = self.loop.call_later(WATCH_AFTER, self._tick)

    def _tick(self) -> None:
        self.ticked = True
        if not self.reading:
            self.start_watching()
            return
        left = self.body_deadline - self.loop.time()
        if left > 0:
            self.timer = self.loop.call_later(left, self._tick)
            return
        self.body_expired = True
        self.task.cancel()

    def body_read(self) -> None:
        self.reading = False
        if self.ticked:  # past WATCH_AFTER already: the timer now waits for the body's deadline
            self.timer.cancel()
            self.start_watching()

    def start_watching(self) -> asyncio.Task:
        if self.watcher is None:
            self.watcher = self.loop.create_task(self._watch())
        return self.watcher

    async def _watch(self) -> Message:
        message = await self.receive()
        # RequestContextMiddleware marks a started response: past that, the answer is on its way.
        if message["type"] == "http.disconnect" and not self.scope.get(RESPONDING):
            self.scope[CLIENT_GONE] = True
            self.task.cancel()
        return message

    async def after_body(self) -> Message:
        return await asyncio.shield(self.start_watching())  # an app listening for a disconnect hears the same one

    def close(self) -> None:
        self.timer.cancel()
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()


class BodyMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float = 60.0,
        route_limits: Mapping[Callable, int] | None = None,
    ):
        """`route_limits`: a route's endpoint -> the body limit for that route instead of `max_body_bytes`."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if self.route_limits:
            limit = self.route_limits.get(getattr(scope.get(ROUTE), "endpoint", None), limit)
        declared = header(scope, b"content-length")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(send, scope, limit)
            return
        exchange = _Exchange(scope, receive, self.body_timeout)
        try:
            try:
                body = await read_body(receive, limit=limit)
            except asyncio.CancelledError:
                if not exchange.body_expired:
                    raise
                exchange.task.uncancel()  # our own deadline, not a shutdown
                await self._timed_out(send, scope)
                return
            except ClientDisconnected:
                return  # nobody to answer, and a partial body must not run
            if body is None:
                await self._too_large(send, scope, limit)
                return
            exchange.body_read()
            try:
                await self.app(scope, replay_body(body, exchange.after_body), send)
            except asyncio.CancelledError:
                if not scope.get(CLIENT_GONE):
                    raise
                exchange.task.uncancel()  # the cancel was ours: the client is gone, nothing is left to answer
        finally:
            exchange.close()

    async def _too_large(self, send: Send, scope: Scope, limit: int) -> None:
        message = f"request body is larger than the limit of {limit} bytes"
        await send_error(send, PayloadTooLarge(message), scope=scope)

    async def _timed_out(self, send: Send, scope: Scope) -> None:
        message = f"request body was not received within {self.body_timeout:g} s"
        await send_error(send, BodyTimeout(message), close=True, scope=scope)

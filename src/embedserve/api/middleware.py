"""Outermost ASGI middleware: request id, body-size limit, access log, HTTP metrics.

Written as plain ASGI (not BaseHTTPMiddleware) because it runs on every request and must
be cheap. The body is read here, up to the limit, and replayed to the app: a body over
the limit is refused with 413 whether it announced its size (Content-Length) or streamed.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserve.api.responses import dumps, error_body
from embedserve.errors import PayloadTooLarge
from embedserve.metrics import Metrics

access_log = logging.getLogger("embedserve.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: Metrics):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-Id", request_id)
            await send(message)

        try:
            body = await self._read_body(scope, receive, headers)
            if body is None:
                await self._too_large(send_with_id)
                return
            await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            seconds = time.perf_counter() - started
            self.metrics.http_request(path, scope["method"], status, seconds)
            access_log.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"request_id": request_id, "status": status, "ms": round(seconds * 1000, 2)},
            )

    async def _read_body(self, scope: Scope, receive: Receive, headers: dict) -> bytes | None:
        """The whole body, or None when it is over the limit."""
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body_bytes:
                    return None
            except ValueError:
                pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        body = dumps(
            error_body(
                f"request body is larger than the limit of {self.max_body_bytes} bytes",
                PayloadTooLarge.type,
                code=PayloadTooLarge.code,
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": PayloadTooLarge.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

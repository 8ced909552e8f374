"""Drive the ASGI app directly, for what an HTTP test client can't do: leave mid-request, trickle a body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import orjson


@dataclass
class Exchange:
    """What the app sent back (nothing at all when it gave up on a client that left)."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self):
        return orjson.loads(self.body)

    def record(self, message) -> bool:
        """Take one message the app sent; True once the response is complete."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            return not message.get("more_body")
        return False


@asynccontextmanager
async def running(app) -> AsyncIterator[None]:
    """The app's lifespan (models load in the background), waited until /ready answers 200."""
    async with app.router.lifespan_context(app):
        for _ in range(500):
            if (await request(app, "GET", "/ready")).status == 200:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("app never became ready")
        yield


async def request(
    app,
    method: str,
    path: str,
    *,
    json=None,
    chunks: Sequence[bytes] | None = None,
    chunk_delay: float = 0.0,
    disconnect_after: float | None = None,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> Exchange:
    """One request. `chunks` sends the body in pieces (`chunk_delay` apart); `disconnect_after`
    seconds after the body, the client leaves (or, if the body isn't all sent by then, mid-body)."""
    body_parts = list(chunks) if chunks is not None else [orjson.dumps(json) if json is not None else b""]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers], "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "state": {},
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    gone = asyncio.Event()
    if disconnect_after is not None:
        loop.call_later(disconnect_after, gone.set)
    parts = iter(enumerate(body_parts))
    exchange = Exchange()

    async def receive():
        index_part = next(parts, None)
        if index_part is not None and not gone.is_set():
            index, part = index_part
            if index and chunk_delay:
                try:
                    await asyncio.wait_for(gone.wait(), chunk_delay)
                except TimeoutError:
                    pass
                if gone.is_set():
                    return {"type": "http.disconnect"}
            return {"type": "http.request", "body": part, "more_body": index < len(body_parts) - 1}
        await gone.wait()  # after the body, the only message a client sends is its leaving
        return {"type": "http.disconnect"}

    async def send(message):
        if exchange.record(message):
            gone.set()  # the response is complete: uvicorn answers a later receive() with a disconnect

    await app(scope, receive, send)
    exchange.seconds = loop.time() - started
    return exchange

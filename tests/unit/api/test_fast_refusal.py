"""A full queue's 429 answered by the HTTP protocol (api/fast_refusal.py, server.py), on the fake
backend under a real uvicorn: the same answer as the app's own 429, the connection still usable,
and everything that is not plainly that 429 (no key, a browser's Origin, a free place) left to the app."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest
import uvicorn

from embedserve.api.app import create_app
from embedserve.api.fast_refusal import FastRefusal, Gate, ReadHolds
from embedserve.backends.fake import FakeBackend
from embedserve.server import protocol_class
from embedserve.settings import Settings
from tests.conftest import FakeResolver

MODEL = "org/fake-model"
KEY = "sk-fast"


class CountingRefusal(FastRefusal):
    """Records which requests the protocol answered itself."""

    def __init__(self, state, pause: float = 0.0) -> None:
        super().__init__(state, pause)
        self.refused = 0

    def answer(self, *args, **kwargs):
        result = super().answer(*args, **kwargs)
        self.refused += isinstance(result, bytes)
        return result


async def serve(app, refusal):
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=protocol_class(5.0, 5.0, refusal), ws="none",
        log_config=None, access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[:2]


async def ask(address, path: str, body: dict | None = None, headers: dict[str, str] | None = None, *, conn=None):
    """One request on a new connection (or `conn`): (status, lower-cased headers, body, connection)."""
    reader, writer = conn or await asyncio.open_connection(*address)
    payload = orjson.dumps(body) if body is not None else b""
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), value.strip())
    content = await asyncio.wait_for(reader.readexactly(int(fields["content-length"])), 10)
    return int(lines[0].split()[1]), fields, content, (reader, writer)


@pytest.fixture
async def full_server():
    """A server whose only model's queue holds one request, and one request holding it (0.8 s)."""

    async def start(pause: float = 0.0, **overrides):
        gate = threading.Event()
        backend = FakeBackend()
        original = backend.encode

        def slow_encode(*args, **kwargs):  # the first batch waits until the test lets it go
            gate.wait(10)
            return original(*args, **kwargs)

        backend.encode = slow_encode
        settings = Settings(**{"models": (MODEL,), "model_workers": 1, "max_queue": 1, "max_batch_size": 1} | overrides)
        app = create_app(settings, backend_factory=lambda path: backend, resolver=FakeResolver())
        refusal = CountingRefusal(app.state, pause)
        server, task, address = await serve(app, refusal)
        for _ in range(500):
            if app.state.ready:
                break
            await asyncio.sleep(0.01)
        auth = {"Authorization": f"Bearer {KEY}"} if overrides.get("api_keys") else {}
        holder = asyncio.create_task(ask(address, "/v1/embeddings", {"input": [[7]]}, auth))
        for _ in range(500):
            if app.state.service.queue_room() == 0:
                break
            await asyncio.sleep(0.01)
        started.append((server, task, gate, holder))
        return app, refusal, address, gate, holder

    started: list = []
    yield start
    for server, task, gate, holder in started:
        gate.set()
        await holder
        server.should_exit = True
        await task


async def test_the_protocols_429_is_the_apps_own_and_the_connection_goes_on(full_server):
    app, refusal, address, gate, holder = await full_server()
    status, headers, body, conn = await ask(address, "/v1/embeddings", {"input": [[8]]}, {"X-Request-Id": "abc"})
    assert refusal.refused == 1  # answered by the protocol
    assert status == 429 and headers["retry-after"] == "1" and 500 <= int(headers["retry-after-ms"]) <= 1500
    assert headers["x-request-id"] == "abc" and headers["content-type"] == "application/json"
    error = orjson.loads(body)["error"]
    assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
    assert f"model '{MODEL}'" in error["message"] and "retry later" in error["message"]
    tei = await ask(address, "/embed", {"inputs": "hi"})  # TEI's route: TEI's error shape
    assert tei[0] == 429 and orjson.loads(tei[2])["error_type"] == "Overloaded" and refusal.refused == 2
    gate.set()
    assert (await holder)[0] == 200
    # the same connection, its refused body read and dropped, now gets a place
    status, _, body, _ = await ask(address, "/v1/embeddings", {"input": [[9]]}, conn=conn)
    assert status == 200 and len(orjson.loads(body)["data"]) == 1
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    text = (await asyncio.wait_for(reader.read(-1), 10)).decode()
    assert 'embedserve_requests_total{method="POST",route="/v1/embeddings",status="429"} 1.0' in text
    assert 'embedserve_requests_total{method="POST",route="/embed",status="429"} 1.0' in text
    assert refusal.in_transit == 0


async def test_no_key_a_browser_or_a_route_that_does_not_queue_take_the_apps_path(full_server):
    app, refusal, address, gate, holder = await full_server(api_keys=(KEY,))
    assert (await ask(address, "/v1/embeddings", {"input": [[8]]}))[0] == 401  # the key check comes first
    wrong = await ask(address, "/v1/embeddings", {"input": [[8]]}, {"Authorization": "Bearer sk-nope"})
    assert wrong[0] == 401 and refusal.refused == 0
    browser = await ask(
        address, "/v1/embeddings", {"input": [[8]]}, {"Authorization": f"Bearer {KEY}", "Origin": "http://page"}
    )
    assert browser[0] == 429 and browser[1]["access-control-allow-origin"] == "*" and refusal.refused == 0
    keyed = await ask(address, "/v1/embeddings", {"input": [[8]]}, {"Authorization": f"Bearer {KEY}"})
    assert keyed[0] == 429 and refusal.refused == 1
    tokenize = await ask(address, "/tokenize", {"inputs": "hi"}, {"Authorization": f"Bearer {KEY}"})
    assert tokenize[0] == 200 and refusal.refused == 1  # no model work queued: never refused
    reader, writer = await asyncio.open_connection(*address)  # a route with a parameter, matched alike
    writer.write(f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).startswith(b"HTTP/1.1 200")
    writer.close()
    gate.set()
    await holder
    assert refusal.in_transit == 0


def test_requests_let_through_count_against_the_room_until_the_app_sees_them():
    """When places free up, only as many requests as there are places are let through; the rest are
    refused at once instead of later by the app (one turn of the event loop can parse many)."""

    class Service:
        room = 2

        def queue_room(self):
            return self.room

        def overloaded(self):
            from embedserve.errors import Overloaded

            return Overloaded("model 'm' has 2 requests waiting (max 2); retry later")

    app = create_app(Settings(models=(MODEL,)), backend_factory=lambda path: FakeBackend(), resolver=FakeResolver())
    app.state.service = Service()
    refusal = FastRefusal(app.state)

    def answer():
        return refusal.answer("POST", "/v1/embeddings", "", [(b"content-type", b"application/json")], [])

    first, second, third = answer(), answer(), answer()
    assert isinstance(first, Gate) and isinstance(second, Gate) and isinstance(third, bytes)
    assert b"429 Too Many Requests" in third and refusal.in_transit == 2
    first.passed()
    first.passed()  # once only
    assert refusal.in_transit == 1 and isinstance(answer(), Gate)
    assert refusal.answer("GET", "/health", "", [], []) is None  # not a queueing route


def request_bytes(path: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload


async def test_a_refused_connection_is_not_read_for_the_pause_then_refused_again(full_server):
    """--refusal-pause: the 429 goes out at once; a retry sent straight back waits, unread, until
    the pause has passed since that 429 (then it is refused again: the queue is still full)."""
    app, refusal, address, gate, holder = await full_server(pause=0.3)
    loop = asyncio.get_running_loop()
    sent = loop.time()
    status, _, _, conn = await ask(address, "/v1/embeddings", {"input": [[8]]})
    assert status == 429 and refusal.refused == 1 and len(refusal.holds) == 1
    retry = asyncio.create_task(ask(address, "/v1/embeddings", {"input": [[9]]}, conn=conn))
    await asyncio.sleep(0.1)
    assert refusal.refused == 1 and not retry.done()  # sent, not read
    status, headers, _, _ = await retry
    assert status == 429 and headers["retry-after"] == "1" and refusal.refused == 2
    assert loop.time() - sent >= 0.3  # the earliest the server could read it: the pause after the first 429
    gate.set()
    assert (await holder)[0] == 200


async def test_a_place_freed_in_the_queue_reads_the_longest_held_connection_at_once(full_server):
    """A held client's retry takes the place a finished request frees, without waiting for its pause
    to end: the engine does not idle while every refused client is held."""
    app, refusal, address, gate, holder = await full_server(pause=0.9)
    loop = asyncio.get_running_loop()
    first = await ask(address, "/v1/embeddings", {"input": [[8]]})
    second = await ask(address, "/v1/embeddings", {"input": [[8]]})
    due = loop.time() + 0.9  # after both holds began
    assert first[0] == second[0] == 429 and len(refusal.holds) == 2
    retries = [asyncio.create_task(ask(address, "/v1/embeddings", {"input": [[i]]}, conn=r[3])) for i, r in
               ((10, first), (11, second))]
    await asyncio.sleep(0.1)
    assert not any(r.done() for r in retries)
    gate.set()  # the holder's request finishes: one place
    assert (await holder)[0] == 200
    status, _, body, _ = await retries[0]  # the longest held, read at once, gets it
    assert loop.time() < due and status == 200 and len(orjson.loads(body)["data"]) == 1
    assert (await retries[1])[0] == 200  # read when the first one's request in turn left
    assert loop.time() < due and refusal.refused == 2 and len(refusal.holds) == 0


class FakeFlow:
    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeTransport:
    def __init__(self, closing: bool = False) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing


async def test_read_holds_resume_in_order_after_the_pause_and_skip_closed_connections():
    loop = asyncio.get_running_loop()
    holds = ReadHolds(0.05)
    flows = [FakeFlow() for _ in range(3)]
    closed = FakeTransport(closing=True)
    holds.hold(loop, flows[0], FakeTransport())
    holds.hold(loop, flows[1], closed)
    await asyncio.sleep(0.02)
    holds.hold(loop, flows[2], FakeTransport())
    assert all(f.paused for f in flows) and len(holds) == 3
    await asyncio.sleep(0.045)  # past the first two's pause, not the third's
    assert not flows[0].paused and flows[1].paused and flows[2].paused  # a closed connection is left alone
    assert len(holds) == 1
    await asyncio.sleep(0.05)
    assert not flows[2].paused and len(holds) == 0
    holds.hold(loop, flows[0], closed)
    holds.hold(loop, flows[1], FakeTransport())
    holds.release_next()  # the oldest open one: the closed one is dropped on the way
    assert not flows[1].paused and len(holds) == 0
    off = ReadHolds(0.0)
    off.hold(loop, flows[2], FakeTransport())
    assert not flows[2].paused and len(off) == 0  # 0 = off

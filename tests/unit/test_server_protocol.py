"""HeaderTimeoutProtocol (src/embedserve/server.py) under uvicorn, on a tiny ASGI app: no model.

The cases tests/reliability/test_transport.py does not reach through the real app: pipelining,
the head-size bound, upgrades, a leftover body that does arrive in time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import uvicorn

from embedserve.server import HeaderTimeoutProtocol, protocol_class

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5
IDLE_TIMEOUT = 0.3
MARGIN = 0.5
GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def app(scope, receive, send):
    """`/early`: 413 before reading the body. Anything else: read the body, answer its length
    (`/slow`: 0.3 s later)."""
    if scope["type"] != "http":
        return
    length = 0
    if scope["path"] != "/early":
        while True:
            message = await receive()
            length += len(message.get("body", b""))
            if not message.get("more_body"):
                break
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    status, body = (413, b"too big") if scope["path"] == "/early" else (200, b"%d" % length)
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def address():
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=protocol_class(HEADER_TIMEOUT, BODY_TIMEOUT), ws="none",
        timeout_keep_alive=IDLE_TIMEOUT, lifespan="off", log_config=None, access_log=False,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[:2]
    server.should_exit = True
    await task


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    return int(head.split(b" ")[1]), head.lower(), await reader.readexactly(length)


async def closed_after(reader: asyncio.StreamReader, started: float) -> tuple[float, bytes]:
    """Seconds from `started` until the server closed the connection, and all it sent."""
    data = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            data += chunk
    return time.monotonic() - started, data


def test_the_server_runs_on_httptools():
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(protocol_class(1, 1), HeaderTimeoutProtocol)
    assert issubclass(HeaderTimeoutProtocol, HttpToolsProtocol)


async def test_a_silent_connection_is_closed_without_an_answer(address):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*address)
    after, data = await closed_after(reader, started)
    writer.close()
    assert data == b"" and HEADER_TIMEOUT - 0.05 <= after <= HEADER_TIMEOUT + MARGIN


async def test_a_started_head_gets_a_408_counted_from_the_connection(address):
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(*address)
    await asyncio.sleep(0.3)
    writer.write(GET[:10])  # the first request's clock started with the connection, not this byte
    after, data = await closed_after(reader, started)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"connection: close" in data and b'"code":"header_timeout"' in data
    assert HEADER_TIMEOUT - 0.05 <= after <= HEADER_TIMEOUT + MARGIN


async def test_a_later_request_is_timed_from_its_first_byte_and_idle_from_the_response(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(GET)
    assert (await read_response(reader))[0] == 200
    await asyncio.sleep(IDLE_TIMEOUT * 0.6)  # idle, under --idle-timeout
    writer.write(GET[:5])
    started = time.monotonic()
    after, data = await closed_after(reader, started)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and HEADER_TIMEOUT - 0.05 <= after <= HEADER_TIMEOUT + MARGIN

    reader, writer = await asyncio.open_connection(*address)
    writer.write(GET)
    await read_response(reader)
    after, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data == b"" and IDLE_TIMEOUT - 0.05 <= after <= IDLE_TIMEOUT + MARGIN


@pytest.mark.parametrize("piece", [17_000, 1_000])
async def test_a_head_still_incomplete_past_16_kib_is_refused(address, piece):
    """As h11 did: a bound on what is buffered waiting for the rest (a whole head in one read is parsed)."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
    for _ in range(17_000 // piece):  # the head never ends; nothing is sent after the bound
        await asyncio.sleep(0.005)
        writer.write(b"a" * piece)
    _, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data.startswith(b"HTTP/1.1 431 ") and b'"code":"request_headers_too_large"' in data


async def test_a_big_head_pipelined_behind_a_request_is_refused_after_its_answer(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.05)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 17_000)
    assert (await read_response(reader))[0] == 200
    _, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data.startswith(b"HTTP/1.1 431 ")


async def test_a_large_head_under_the_bound_is_served(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 15_000 + b"\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_pipelined_requests_are_answered_in_order_and_a_partial_one_timed_from_the_last_answer(address):
    body = b"b" * 100_000  # a big body then a partial head in one write: no false "head too large"
    post = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    reader, writer = await asyncio.open_connection(*address)
    writer.write(GET + post + GET + GET[:8])
    answers = [await read_response(reader) for _ in range(3)]
    started = time.monotonic()
    assert [(status, body) for status, _, body in answers] == [(200, b"0"), (200, b"100000"), (200, b"0")]
    after, data = await closed_after(reader, started)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and after <= HEADER_TIMEOUT + MARGIN


async def test_a_leftover_body_must_arrive_within_the_body_timeout(address):
    head = b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
    reader, writer = await asyncio.open_connection(*address)
    writer.write(head + b"x" * 10)
    assert (await read_response(reader))[0] == 413
    started = time.monotonic()

    async def trickle():
        for _ in range(100):
            await asyncio.sleep(0.05)
            writer.write(b"x")

    dripping = asyncio.create_task(trickle())
    after, data = await closed_after(reader, started)
    dripping.cancel()
    writer.close()
    assert data == b"" and BODY_TIMEOUT - 0.05 <= after <= BODY_TIMEOUT + MARGIN


async def test_a_leftover_body_that_arrives_in_time_leaves_the_connection_usable_then_idle(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
    assert (await read_response(reader))[0] == 413
    writer.write(b"x" * 1000)
    writer.write(GET)
    assert (await read_response(reader))[0] == 200
    writer.write(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")
    assert (await read_response(reader))[0] == 413
    writer.write(b"x" * 10)  # the rest in time: idle from here on, under the keep-alive timer
    after, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data == b"" and IDLE_TIMEOUT - 0.05 <= after <= IDLE_TIMEOUT + MARGIN


async def test_an_upgrade_request_is_answered_then_the_connection_closes(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    status, head, _ = await read_response(reader)
    assert status == 200 and b"connection: close" in head
    writer.write(b"x")
    after, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data == b"" and after < 0.2


async def test_a_malformed_request_gets_a_400(address):
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    _, data = await closed_after(reader, time.monotonic())
    writer.close()
    assert data.startswith(b"HTTP/1.1 400 ")

"""Slow and idle clients against a real server process (src/embedserve/server.py).

Short timeouts keep the test quick: --header-timeout 3 and --body-timeout 3 (long enough for a
normal client to be served while 400 trickling connections are held), --idle-timeout 1.
Clocks are the client's, and a timer can fire late on a busy 2-core machine, so a close is
expected between the timeout and the timeout plus MARGIN; never before it (less EARLY: the
server's clock can start a little before the client's).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.reliability.conftest import FAST_START, start_server, stop_server

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 3.0
IDLE_TIMEOUT = 1.0
MARGIN = 1.5
EARLY = 0.25  # the server's clock may start first: at the response it sends, or while the client's loop is busy
TRICKLERS = 200  # of each kind: headers, bodies
DRIP_S = 0.25  # each trickler sends one byte this often
NORMAL_BOUND_S = 2.0  # each normal request, while the tricklers are held (it takes ~0.05 s idle)

HEAD = b"GET /health HTTP/1.1\r\nHost: embedserve\r\nUser-Agent: slow\r\n\r\n"  # 58 bytes: ~15 s to trickle
BODY_HEAD = (
    b"POST /v1/embeddings HTTP/1.1\r\nHost: embedserve\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)
BODY = b'{"input": ["' + b"a" * 986 + b'"]}'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(
        tmp_path_factory.mktemp("transport"), *FAST_START,
        "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
        "--idle-timeout", str(IDLE_TIMEOUT),
    )
    yield srv
    stop_server(srv)


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


@dataclass
class Closed:
    after: float  # seconds from the clock's start until the server closed the connection
    response: bytes  # everything the server sent


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks = []
    async with asyncio.timeout(limit):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send `data` one byte every DRIP_S seconds, until cancelled or the connection is gone."""
    for byte in data:
        await asyncio.sleep(DRIP_S)
        if writer.is_closing():
            return
        writer.write(bytes([byte]))


async def trickle(host: str, port: int, head: bytes, rest: bytes, connected: list) -> Closed:
    """Open a connection, send `head` at once and `rest` a byte at a time; wait for the close."""
    started = time.monotonic()  # before the connection: the server's clock can't start earlier
    reader, writer = await asyncio.open_connection(host, port)
    connected.append(time.monotonic())
    writer.write(head)
    dripping = asyncio.create_task(drip(writer, rest))
    try:
        response = await read_until_closed(reader, limit=max(HEADER_TIMEOUT, BODY_TIMEOUT) + 10)
        return Closed(time.monotonic() - started, response)
    finally:
        dripping.cancel()
        writer.close()


def status_of(response: bytes) -> int | None:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None


async def test_trickling_clients_are_cut_off_and_never_starve_a_normal_one(server):
    host, port = address(server)
    payload = {"input": ["A man is playing a guitar.", "A cat sleeps on the sofa."]}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        assert (await client.post("/v1/embeddings", json=payload)).status_code == 200  # warm up
        connected: list[float] = []
        tricklers = [asyncio.create_task(trickle(host, port, b"", HEAD, connected)) for _ in range(TRICKLERS)]
        tricklers += [asyncio.create_task(trickle(host, port, BODY_HEAD, BODY, connected)) for _ in range(TRICKLERS)]
        async with asyncio.timeout(10):
            while len(connected) < 2 * TRICKLERS:
                await asyncio.sleep(0.01)
        # The normal client's window: from the last trickler's connection until 0.7 s before the
        # first one can be cut off.
        window_end = min(connected) + min(HEADER_TIMEOUT, BODY_TIMEOUT) - 0.7
        answered = []
        while time.monotonic() < window_end:
            for send in (lambda: client.post("/v1/embeddings", json=payload), lambda: client.get("/health")):
                began = time.monotonic()
                response = await send()
                answered.append((response.status_code, time.monotonic() - began))
        held_throughout = sum(not task.done() for task in tricklers)
        closed = await asyncio.gather(*tricklers)

    assert len(answered) >= 4, answered
    assert {status for status, _ in answered} == {200}, answered
    slowest = max(seconds for _, seconds in answered)
    assert slowest < NORMAL_BOUND_S, answered
    assert held_throughout == 2 * TRICKLERS  # the normal requests were served while all 400 were held

    for kind, outcomes, timeout in (
        ("header", closed[:TRICKLERS], HEADER_TIMEOUT), ("body", closed[TRICKLERS:], BODY_TIMEOUT)
    ):
        times = sorted(outcome.after for outcome in outcomes)
        assert timeout - EARLY <= times[0] and times[-1] <= timeout + MARGIN, (kind, times[0], times[-1])
        statuses = [status_of(outcome.response) for outcome in outcomes]
        # A 408 can be lost to a reset when a byte crosses the close; every answer is a 408.
        assert set(statuses) <= {408, None} and statuses.count(408) >= 0.9 * TRICKLERS, (kind, statuses)
    header_408 = next(o.response for o in closed[:TRICKLERS] if status_of(o.response) == 408)
    assert b"connection: close" in header_408.lower() and b'"code":"header_timeout"' in header_408
    print(
        f"\nnormal requests: {len(answered)}, slowest {slowest:.3f}s; closed after: headers "
        f"{min(o.after for o in closed[:TRICKLERS]):.2f}-{max(o.after for o in closed[:TRICKLERS]):.2f}s, "
        f"bodies {min(o.after for o in closed[TRICKLERS:]):.2f}-{max(o.after for o in closed[TRICKLERS:]):.2f}s; "
        f"408s: {sum(status_of(o.response) == 408 for o in closed)}/{len(closed)}"
    )


async def idle_keep_alive(host: str, port: int) -> tuple[list[int], float]:
    """Two requests 0.5 s apart on one connection (kept alive), then idle until the server closes it."""
    reader, writer = await asyncio.open_connection(host, port)
    statuses = []
    for pause in (0, IDLE_TIMEOUT / 2):
        await asyncio.sleep(pause)
        writer.write(HEAD)
        statuses.append((await read_response(reader))[0])
    answered = time.monotonic()
    rest = await read_until_closed(reader, limit=IDLE_TIMEOUT + 10)
    writer.close()
    assert rest == b""
    return statuses, time.monotonic() - answered


async def silent(host: str, port: int) -> Closed:
    """A new connection that never sends a byte."""
    return await trickle(host, port, b"", b"", [])


async def slow_second_request(host: str, port: int) -> tuple[int, Closed]:
    """A kept-alive connection whose second request trickles in: timed from its first byte."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HEAD)
    status = (await read_response(reader))[0]
    await asyncio.sleep(IDLE_TIMEOUT / 2)
    writer.write(HEAD[:1])
    started = time.monotonic()
    dripping = asyncio.create_task(drip(writer, HEAD[1:]))
    response = await read_until_closed(reader, limit=HEADER_TIMEOUT + 10)
    dripping.cancel()
    writer.close()
    return status, Closed(time.monotonic() - started, response)


async def leftover_body(host: str, port: int) -> tuple[int, Closed]:
    """A body announced past --max-body-bytes: 413 at once, then the rest trickles in."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(BODY_HEAD.replace(b"Content-Length: 1000", b"Content-Length: 1000000000000"))
    status = (await read_response(reader))[0]
    started = time.monotonic()
    dripping = asyncio.create_task(drip(writer, BODY))
    response = await read_until_closed(reader, limit=BODY_TIMEOUT + 10)
    dripping.cancel()
    writer.close()
    return status, Closed(time.monotonic() - started, response)


async def test_idle_silent_and_leftover_connections_are_closed(server):
    host, port = address(server)
    (statuses, idle_for), quiet, (first, second), (refused, leftover) = await asyncio.gather(
        idle_keep_alive(host, port), silent(host, port), slow_second_request(host, port), leftover_body(host, port)
    )
    assert statuses == [200, 200]  # kept alive across a pause shorter than --idle-timeout
    assert IDLE_TIMEOUT - EARLY <= idle_for <= IDLE_TIMEOUT + MARGIN
    # A silent connection is closed without an answer it did not ask for.
    assert quiet.response == b"" and HEADER_TIMEOUT - EARLY <= quiet.after <= HEADER_TIMEOUT + MARGIN
    assert first == 200 and status_of(second.response) == 408
    assert HEADER_TIMEOUT - EARLY <= second.after <= HEADER_TIMEOUT + MARGIN
    assert refused == 413 and leftover.response == b""
    assert BODY_TIMEOUT - EARLY <= leftover.after <= BODY_TIMEOUT + MARGIN
    print(
        f"\nidle closed after {idle_for:.2f}s, silent {quiet.after:.2f}s, "
        f"slow second request {second.after:.2f}s, leftover body {leftover.after:.2f}s"
    )

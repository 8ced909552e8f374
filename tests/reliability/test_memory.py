"""Resident memory: flat over 10,000 requests, and back near its baseline after the largest bodies.

Before this suite one 16 MB body of 5.4 M CJK characters was tokenized whole before truncation
and took the server from 3.7 to 6.8 GB of resident memory, never given back. Figures go to
docs/reliability.md (the test prints them; run with -s to see).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx
import pytest

from .conftest import FAST_START, start_server, stop_server

pytestmark = pytest.mark.integration

MIB = 1 << 20


def rss(server) -> int:
    with open(f"/proc/{server.process.pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("memory"), *FAST_START)
    yield srv
    stop_server(srv)


async def send_many(url: str, count: int, concurrency: int = 16) -> list[int]:
    statuses: list[int] = []
    sentences = [f"request number {i} asks for the embedding of a short sentence" for i in range(count)]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(offset: int) -> None:
            for i in range(offset, count, concurrency):
                async with session.post(url + "/v1/embeddings", json={"input": sentences[i]}) as r:
                    await r.read()
                    statuses.append(r.status)

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return statuses


def test_resident_memory_stays_flat_over_10000_requests(server):
    asyncio.run(send_many(server.url, 1000))  # warm-up: allocator pools, batch shapes
    before = rss(server)
    statuses = asyncio.run(send_many(server.url, 10_000))
    after = rss(server)
    print(f"\nRSS over 10,000 requests: {before / MIB:.1f} -> {after / MIB:.1f} MiB")
    assert statuses.count(200) == 10_000
    assert after - before < 32 * MIB, (before / MIB, after / MIB)


def test_the_largest_body_is_read_only_as_far_as_the_model_reads(server):
    text = "漢字仮名交じり文" * 675_000  # 5.4 M CJK characters: 16.2 MB of UTF-8, under the 16 MiB body limit
    body = json.dumps({"input": text}, ensure_ascii=False).encode()
    assert 16_000_000 < len(body) <= 16 * MIB
    baseline = rss(server)
    peaks = []
    for _ in range(3):
        r = httpx.post(server.url + "/v1/embeddings", content=body, headers={"content-type": "application/json"},
                       timeout=120)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["usage"]["prompt_tokens"] == 256  # truncated to the model's maximum
        peaks.append(rss(server))
    short = httpx.post(server.url + "/v1/embeddings", json={"input": text[:300]}).json()
    assert short["data"][0]["embedding"] == r.json()["data"][0]["embedding"]  # the same first 254 tokens
    print(f"\nRSS around three 16 MB CJK bodies: {baseline / MIB:.1f} -> {[round(p / MIB, 1) for p in peaks]} MiB")
    assert max(peaks) - baseline < 200 * MIB, (baseline / MIB, [p / MIB for p in peaks])

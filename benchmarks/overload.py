"""Overload: many connections against a small queue. What every answer was, how fast the 429s came.

`connections` clients first open their connections (a GET /health each, untimed: opening 256
at once is a connection storm, a different test), then start over `ramp` seconds (default 0:
all at the same instant) and each loops until `seconds` have passed: POST one body, read the answer, repeat. On a
429 a client either retries at once (`--retry-after ignore`, the harshest case) or sleeps
what the answer says (`honour`, as OpenAI's SDKs do: retry-after-ms first, else Retry-After). Counted: statuses,
connection errors (a reset or a dropped connection counts here, never as a status), the
latency of every 429 and every 200, whether each 429 carried Retry-After, and the goodput
(200s per second). aiohttp keeps the client's own CPU cost low (the server shares the cores).

    python benchmarks/overload.py --url http://127.0.0.1:8000 --connections 256 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

BODY = {"input": "A man is playing a guitar on the stage tonight.", "model": "all-MiniLM-L6-v2"}


@dataclass
class OverloadResult:
    connections: int
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # exception class name -> count
    rejected_ms: list[float] = field(default_factory=list)
    served_ms: list[float] = field(default_factory=list)
    retry_after_missing: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def goodput(self) -> float:
        return self.statuses[200] / self.seconds

    def summary(self) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

        return {
            "connections": self.connections,
            "seconds": round(self.seconds, 2),
            "sent": self.sent,
            "statuses": dict(sorted(self.statuses.items())),
            "errors": dict(self.errors),
            "goodput_per_s": round(self.goodput, 1),
            "429_ms": {"p50": pct(self.rejected_ms, 0.5), "p99": pct(self.rejected_ms, 0.99),
                       "max": pct(self.rejected_ms, 1.0)},
            "200_ms": {"p50": pct(self.served_ms, 0.5), "p99": pct(self.served_ms, 0.99)},
            "429_without_retry_after": self.retry_after_missing,
        }


async def run_overload(
    url: str,
    *,
    connections: int,
    seconds: float,
    body: dict = BODY,
    honour_retry_after: bool = False,
    headers: dict | None = None,
    ramp: float = 0.0,
) -> OverloadResult:
    target = url.rstrip("/") + "/v1/embeddings"
    payload = orjson.dumps(body)
    sent_headers = {"content-type": "application/json", **(headers or {})}
    result = OverloadResult(connections, seconds)
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=max(30.0, seconds))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def connect() -> None:
            async with session.get(url.rstrip("/") + "/health", headers=headers) as response:
                await response.read()

        await asyncio.gather(*(connect() for _ in range(connections)))  # the pool now holds them all, idle
        started = time.perf_counter()
        deadline = started + seconds

        async def client(k: int) -> None:
            await asyncio.sleep(ramp * k / connections)
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    async with session.post(target, data=payload, headers=sent_headers) as response:
                        await response.read()
                        status, retry_after = response.status, response.headers.get("Retry-After")
                        retry_after_ms = response.headers.get("retry-after-ms")
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                result.statuses[status] += 1
                if status == 429:
                    result.rejected_ms.append(ms)
                    if retry_after is None:
                        result.retry_after_missing += 1
                    elif honour_retry_after:  # as OpenAI's SDKs do: retry-after-ms first, else Retry-After
                        wait = float(retry_after_ms) / 1000 if retry_after_ms else float(retry_after)
                        await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))
                elif status == 200:
                    result.served_ms.append(ms)

        await asyncio.gather(*(client(k) for k in range(connections)))
        result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--retry-after", choices=("ignore", "honour"), default="ignore")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which the clients start (0: at once)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop (less client CPU)")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    result = asyncio.run(
        run_overload(args.url, connections=args.connections, seconds=args.seconds,
                     honour_retry_after=args.retry_after == "honour", headers=headers, ramp=args.ramp)
    )
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()

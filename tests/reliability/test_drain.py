"""SIGTERM under load: stop accepting, finish every in-flight request, exit 0 in time.

16 requests of 64 texts each are all admitted by the engine (its queue-depth gauge reads 16)
before SIGTERM, and none has finished: on 2 cores the first takes over a second, the last
several. Every one must still complete with all its vectors.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import signal
import time

import httpx
import pytest

from tests.reliability.conftest import FAST_START, start_server, stop_server

pytestmark = pytest.mark.integration

REQUESTS = 16
TEXTS = 64
GRACEFUL_TIMEOUT = 60.0
TEXT = "The quick brown fox jumps over the lazy dog while the band keeps playing in the park all afternoon."


def queue_depth(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    found = re.search(r"^embedserve_queue_depth\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_sigterm_drains_sixteen_bulk_requests(tmp_path):
    server = start_server(tmp_path, *FAST_START, "--graceful-timeout", str(GRACEFUL_TIMEOUT))
    try:
        payloads = [{"input": [f"{i}.{j} {TEXT}" for j in range(TEXTS)]} for i in range(REQUESTS)]

        def send(payload):
            response = httpx.post(server.url + "/v1/embeddings", json=payload, timeout=GRACEFUL_TIMEOUT + 60)
            data = response.json().get("data", [])
            return response.status_code, len(data), {len(item["embedding"]) for item in data}

        with cf.ThreadPoolExecutor(REQUESTS) as pool:
            futures = [pool.submit(send, payload) for payload in payloads]
            deadline = time.monotonic() + 30
            while (depth := queue_depth(server.url)) < REQUESTS and time.monotonic() < deadline:
                time.sleep(0.02)
            in_flight = sum(not f.done() for f in futures)
            assert depth == REQUESTS and in_flight == REQUESTS, f"depth {depth}, in flight {in_flight}: vacuous"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Nothing new is accepted while the 16 are still being computed.
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(server.url + "/health", timeout=2)
            still_running = sum(not f.done() for f in futures)
            assert still_running > 0, "all requests finished before the refusal was checked"

            results = [f.result(timeout=GRACEFUL_TIMEOUT + 60) for f in futures]
        assert results == [(200, TEXTS, {384})] * REQUESTS
        assert server.process.wait(timeout=GRACEFUL_TIMEOUT) == 0
        exited_after = time.monotonic() - signalled
        assert exited_after < GRACEFUL_TIMEOUT
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=2)
        print(f"\nin flight at SIGTERM: {REQUESTS}; still running 0.5 s later, when a new connection was refused: "
              f"{still_running}; exit 0 after {exited_after:.1f}s")
    finally:
        stop_server(server)

"""SIGTERM: stop accepting, finish every in-flight request, exit 0."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import time

import httpx
import pytest

from .conftest import start_server, stop_server

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_requests(tmp_path):
    server = start_server(tmp_path)
    try:
        text = "a fairly long sentence that keeps the model busy for a little while " * 12
        payload = {"input": [text] * 64}

        def send():
            r = httpx.post(server.url + "/v1/embeddings", json=payload, timeout=120)
            return r.status_code, len(r.json().get("data", []))

        with cf.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(send) for _ in range(6)]
            time.sleep(0.5)  # all six are in flight: each takes well over a second on 2 cores
            assert not any(f.done() for f in futures), "requests finished before SIGTERM; test is vacuous"
            server.process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=180) for f in futures]
        assert results == [(200, 64)] * 6
        assert server.process.wait(timeout=60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=2)
    finally:
        stop_server(server)

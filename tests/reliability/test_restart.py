"""kill -9 and restart: the ONNX graph cache survives a killed server (even one killed mid-build), and
a corrupt cache entry is rebuilt, with the server serving the right vectors each time."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from .conftest import start_server, stop_server

pytestmark = pytest.mark.integration

SENTENCES = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill."]


def onnx_server(tmp_path, cache: Path):
    return start_server(tmp_path, "--backend", "onnx", "--dtype", "fp32", "--cache-dir", str(cache), timeout=300)


def vectors(server) -> np.ndarray:
    r = httpx.post(server.url + "/v1/embeddings", json={"input": SENTENCES}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("meta.json"))


def kill9(server) -> None:
    server.process.send_signal(signal.SIGKILL)
    assert server.process.wait(timeout=30) == -signal.SIGKILL


def test_kill_9_mid_build_then_while_serving_then_a_corrupt_entry(tmp_path, reference_model):
    cache = tmp_path / "graphs"
    expected = reference_model.encode(SENTENCES)

    # 1. killed while exporting the graph: nothing half-written is ever taken for a cache entry
    import subprocess
    import sys

    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "embedserve", "serve", "--port", "0", "--backend", "onnx", "--dtype", "fp32",
         "--cache-dir", str(cache)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not cache.exists() or not any(cache.rglob(".*")):  # the build's scratch folder appeared
        assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert entries(cache) == []  # no complete entry: the build had not finished

    # 2. the restart builds it and serves; kill -9 while serving
    server = onnx_server(tmp_path, cache)
    assert "graph" in server.log() and "built" in server.log()
    np.testing.assert_allclose(vectors(server), expected, atol=2e-4)
    built = entries(cache)
    assert len(built) == 1
    kill9(server)

    # 3. restarted from the cache: no rebuild, same vectors
    started = time.monotonic()
    server = onnx_server(tmp_path, cache)
    print(f"\nrestart from the graph cache: ready in {time.monotonic() - started:.1f} s")
    assert "from cache" in server.log()
    np.testing.assert_allclose(vectors(server), expected, atol=2e-4)
    kill9(server)

    # 4. a corrupt entry (a truncated graph) is rebuilt at the next start
    graph = next(built[0].parent.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:1000])
    server = onnx_server(tmp_path, cache)
    try:
        assert "unusable" in server.log() and "rebuilding" in server.log()
        np.testing.assert_allclose(vectors(server), expected, atol=2e-4)
        assert graph.stat().st_size > 1_000_000
    finally:
        stop_server(server)

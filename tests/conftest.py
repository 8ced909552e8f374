"""Shared fixtures: an app on the deterministic fake backend, and a client that waits for it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.models.registry import ResolvedModel, aliases_for
from embedserve.settings import ORIGINALS_ENV, Settings

# torch.compile costs 10-25 s per model load on these 2-core machines, and the suite loads the
# real default model in auto mode (which compiles its CPU bf16 encoder) in some 30 servers and
# backends; at that price CI would pass 30 minutes. So the suite, and every server it starts
# (they inherit this environment), runs eager unless a test asks otherwise:
# tests/integration/test_torch_compile.py loads compiled models explicitly and checks them.
os.environ.setdefault("EMBEDSERVE_TORCH_COMPILE", "off")
# The originals' variables (settings.ORIGINALS_ENV: PORT, MODEL_NAME, API_KEY...) are settings too; a
# host that happens to set one must not change what the suite's servers do.
for _name in ORIGINALS_ENV:
    os.environ.pop(_name, None)


class FakeResolver:
    """Resolves any name to a fake folder; names starting with 'missing' are not found."""

    def resolve(self, name: str, **policy) -> ResolvedModel:
        from embedserve.errors import ModelNotFound

        if name.startswith("missing"):
            raise ModelNotFound(f"model '{name}' could not be found", param="model")
        return ResolvedModel(name, Path("/fake") / name, "fake", aliases_for(name))


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"app not ready: {client.get('/ready').json()}")


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def make_client(fake_backend: FakeBackend):
    """make_client(**settings) -> a ready TestClient on the fake backend (one model, 'fake-model')."""
    clients: list[TestClient] = []

    def factory(backend: FakeBackend | None = None, *, training_command=None, **overrides) -> TestClient:
        settings = Settings(**{"models": ("org/fake-model",), **overrides})
        chosen = backend or fake_backend
        app = create_app(
            settings, backend_factory=lambda path: chosen, resolver=FakeResolver(), training_command=training_command
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> Iterator[TestClient]:
    yield make_client()

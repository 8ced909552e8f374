"""Ray Serve's model multiplexing in a replica (deploy/ray_multiplex.py), on the fake backend without Ray:
the header's model loads through the pool's rules after the key check, and Ray's eviction unloads it."""

from __future__ import annotations

import asyncio

import pytest

from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.deploy import ray_multiplex
from embedserve.deploy.ray_multiplex import MultiplexedModels, ReplicaModel, max_models_per_replica
from embedserve.errors import ModelNotFound
from embedserve.settings import Settings
from tests.conftest import FakeResolver
from tests.support.asgi import request, running

MODEL = "org/fake-model"
KEY = "sk-multiplex"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]


def make_app(load, **overrides):
    settings = Settings(**{"models": (MODEL,), "model_workers": 1, "api_keys": (KEY,)} | overrides)
    return create_app(
        settings, backend_factory=lambda path: FakeBackend(), resolver=FakeResolver(),
        inner_middleware=[(MultiplexedModels, {"load": load})],
    )


@pytest.fixture
def header(monkeypatch):
    """What Ray's replica reads from the request's `serve_multiplexed_model_id` header."""
    value = {"id": ""}
    monkeypatch.setattr(ray_multiplex.serve, "get_multiplexed_model_id", lambda: value["id"])
    return value


async def test_the_headers_model_is_loaded_after_the_key_check_on_inference_routes_only(header):
    asked: list[str] = []

    async def load(model_id):
        asked.append(model_id)

    app = make_app(load)
    async with running(app):
        header["id"] = "org/other"
        ok = await request(app, "POST", "/v1/embeddings", json={"input": [[5]]}, headers=AUTH)
        assert ok.status == 200 and asked == ["org/other"]
        refused = await request(app, "POST", "/v1/embeddings", json={"input": [[5]]})
        assert refused.status == 401 and asked == ["org/other"]  # no key: nothing loads
        assert (await request(app, "GET", "/health")).status == 200 and asked == ["org/other"]
        header["id"] = ""
        assert (await request(app, "POST", "/v1/embeddings", json={"input": [[5]]}, headers=AUTH)).status == 200
        assert asked == ["org/other"]  # no header: Ray routes as usual and nothing extra loads


async def test_a_model_the_pool_refuses_is_answered_in_the_routes_shape(header):
    async def load(model_id):
        raise ModelNotFound(f"model '{model_id}' is not loaded here", param="model")

    app = make_app(load)
    async with running(app):
        header["id"] = "org/missing"
        r = await request(app, "POST", "/v1/embeddings", json={"input": [[5]]}, headers=AUTH)
        assert r.status == 404 and r.json()["error"]["param"] == "model"
        tei = await request(app, "POST", "/embed", json={"inputs": "hi"}, headers=AUTH)
        assert tei.status == 404 and "error_type" in tei.json()  # TEI's error shape on TEI's route


async def test_rays_eviction_unloads_a_request_loaded_model_once_and_never_an_operators(header):
    app = make_app(lambda model_id: None, max_loaded_models=3)
    async with running(app):
        pool = app.state.service.pool
        loop = asyncio.get_running_loop()
        extra = await pool.get_or_load("org/extra")
        evicted = ReplicaModel(pool, extra, loop)
        await loop.run_in_executor(None, evicted.__del__)  # as Ray calls it, from a thread
        for _ in range(100):
            if pool.find("org/extra") is None:
                break
            await asyncio.sleep(0.01)
        assert pool.find("org/extra") is None
        evicted.__del__()  # collected later: nothing more happens
        operator = ReplicaModel(pool, pool.find(MODEL), loop)
        operator.__del__()
        await asyncio.sleep(0.05)
        assert pool.find(MODEL) is not None
        again = ReplicaModel(pool, await pool.get_or_load("org/extra"), loop)
        await pool.unload("org/extra")  # the pool evicted it first: Ray's eviction is then a no-op
        again.__del__()
        await asyncio.sleep(0.05)
        assert pool.find("org/extra") is None and pool.find(MODEL) is not None


def test_rays_bound_per_replica_is_the_pools():
    assert max_models_per_replica(Settings(models=(MODEL,), max_loaded_models=4)) == 4
    assert max_models_per_replica(Settings(models=(MODEL,), max_loaded_models=0)) == -1  # no bound

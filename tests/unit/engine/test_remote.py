"""Front-ends of `--api-processes` (engine/remote.py) against a real engine server on the fake backend:
what a route gets from a front-end's service equals what it gets in one process; a model loaded
through one front-end reaches another by the engine's event alone; a lost engine is a 503 and
/ready's "not ready"; a model tokenized in the engine goes there whole; jobs cross the wire intact."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from embedserve.engine import remote
from embedserve.engine.engine_handlers import EngineHandlers
from embedserve.engine.ipc import EngineServer
from embedserve.engine.remote import EngineLink
from embedserve.errors import NotReady
from embedserve.models.tasks import Task
from embedserve.processes import resolve_api_processes
from embedserve.settings import Settings
from embedserve.training.data import Pair, Parsed
from embedserve.training.intake import JobRequest
from embedserve.training.remote import job_request_from_dict, job_request_to_dict
from embedserve.training.spec import Hyperparameters
from tests.unit.engine.test_model_pool import CountingFactory, make_service, wait_for

ALL = frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR})


@pytest.fixture
async def engine(tmp_path, monkeypatch):
    """An engine (the fake backend's models) and a way to make front-ends: their tokenizer is the
    engine model's own fake backend (a front-end builds it from the model's files)."""
    service = make_service(CountingFactory(tasks=ALL))
    server = EngineServer({})
    handlers = EngineHandlers(service.pool, server, service=service)
    server.handlers = handlers.handlers()
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    handlers.ready = True
    monkeypatch.setattr(remote, "_tokenizer_backend",
                        lambda p, info: next(m.worker.backend for m in service.pool.models if m.path == p))
    links = []

    async def front_end() -> EngineLink:
        link = EngineLink(path, service.settings, SimpleNamespace(ready=False, load_error=None))
        link.start()
        links.append(link)
        await wait_for(lambda: link.app_state.ready)
        return link

    yield service, server, front_end
    for link in links:
        await link.close()
    await server.close()
    await service.pool.close()


async def test_a_front_end_encodes_as_the_engine_does_in_one_process(engine):
    service, _, front_end = engine
    link = await front_end()
    texts = ["a b c", "hello there", "x"]
    got = await link.service.encode("org/a", texts, ALL, dimensions=4, normalize=True)  # loads it, through the engine
    want = await service.encode("org/a", texts, ALL, dimensions=4, normalize=True)
    assert got.model.id == want.model.id == "org/a" and got.prompt_tokens == want.prompt_tokens
    np.testing.assert_array_equal(got.dense, want.dense)
    for a, b in zip(got.sparse, want.sparse, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    for a, b in zip(got.multivector, want.multivector, strict=True):
        np.testing.assert_array_equal(a, b)


async def test_a_load_through_one_front_end_reaches_the_other_by_the_event(engine):
    _, _, front_end = engine
    first, second = await front_end(), await front_end()
    calls = []
    real_call = second.client.call
    second.client.call = lambda op, *a, **k: calls.append(op) or real_call(op, *a, **k)  # type: ignore[method-assign]
    await first.service.pool.get_or_load("org/b")
    await wait_for(lambda: second.service.pool.find("org/b") is not None, timeout=0.5)  # well before a refresh
    assert "load" not in calls
    await first.service.pool.unload("org/b")
    await wait_for(lambda: second.service.pool.find("org/b") is None, timeout=0.5)
    with pytest.raises(NotReady, match="unloaded"):  # the engine's own answer for an unloaded name: 503, not 404
        second.service.pool.get("org/b")


async def test_a_lost_engine_is_503_and_not_ready_until_it_is_back(engine):
    service, server, front_end = engine
    link = await front_end()
    await link.service.pool.get_or_load("org/a")
    await server.close()
    await wait_for(lambda: not link.app_state.ready)
    with pytest.raises(NotReady):
        await link.service.encode("org/a", ["hi"], frozenset({Task.EMBED}))
    await server.start(link.client.path)
    await wait_for(lambda: link.app_state.ready, timeout=5)
    assert (await link.service.encode("org/a", ["hi"], frozenset({Task.EMBED}))).dense.shape == (1, 8)


async def test_a_model_tokenized_in_the_engine_gets_its_requests_there_whole(engine, monkeypatch):
    service, _, front_end = engine
    monkeypatch.setattr(remote, "_tokenizer_backend", lambda p, info: remote.TokenizedInEngine(info))
    link = await front_end()
    got = await link.service.encode("org/c", ["query one", "two"], ALL, input_type="query")
    want = await service.encode("org/c", ["query one", "two"], ALL, input_type="query")
    assert got.prompt_tokens == want.prompt_tokens
    np.testing.assert_array_equal(got.dense, want.dense)
    for a, b in zip(got.multivector, want.multivector, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_job_request_crosses_the_wire_unchanged():
    import orjson

    request = JobRequest(
        name="mine", base_name="org/a", base_path="/models/a", method="lora",
        train=Parsed([Pair("q", "p"), Pair("q2", "p2", "n2")], 1), validation=None,
        hyperparameters=Hyperparameters(epochs=2, lora_target_modules=("query", "value")),
        asked="qlora", message="QLoRA needs CUDA: LoRA instead", suffix="s",
    )
    assert job_request_from_dict(orjson.loads(orjson.dumps(job_request_to_dict(request)))) == request


def test_api_processes_auto_is_one_process_on_a_cpu():
    assert resolve_api_processes(Settings(api_processes="auto", device="cpu")) == 1
    assert resolve_api_processes(Settings(api_processes="3", device="cpu")) == 3
    with pytest.raises(ValueError):
        Settings(api_processes="0")


async def test_engine_link_survives_its_close_before_connecting(tmp_path):
    link = EngineLink(str(tmp_path / "nobody.sock"), Settings(), SimpleNamespace(ready=True, load_error=None))
    link.start()
    await asyncio.sleep(0.05)
    assert link.app_state.ready is False
    await link.close()


async def test_jobs_run_in_the_engine_and_a_front_end_reads_them_from_the_store(tmp_path):
    from embedserve.engine.ipc import EngineClient
    from embedserve.training.manager import JobManager
    from embedserve.training.remote import RemoteJobManager
    from tests.support.training import fake_command

    settings = Settings(models_dir=tmp_path / "models", state_dir=tmp_path / "state")
    jobs = JobManager(settings, command=fake_command("hang"), poll_interval=0.02, stop_timeout=5)
    await jobs.start()
    service = make_service(CountingFactory())
    server = EngineServer({})
    server.handlers = EngineHandlers(service.pool, server, jobs=jobs).handlers()
    await server.start(str(tmp_path / "engine.sock"))
    client = EngineClient(str(tmp_path / "engine.sock"))
    await client.connect()
    front = RemoteJobManager(settings, client)
    await front.start()
    try:
        request = JobRequest(name="tuned", base_name="org/base", base_path="/base", method="full",
                             train=Parsed([Pair("q1", "p1"), Pair("q2", "p2")], 0))
        job = await front.submit(request)
        assert job.status in ("pending", "running") and job.id in jobs._procs  # the engine's child
        await wait_for(lambda: front.get(job.id).status == "running", timeout=20)
        assert [j.id for j in front.list()] == [job.id]
        assert (await front.cancel(job.id)).status == "cancelled"
        assert jobs.get(job.id).status == "cancelled"
    finally:
        await front.stop()
        await client.close()
        await server.close()
        await jobs.stop()
        await service.pool.close()

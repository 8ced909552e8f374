"""ModelPool: on-demand loading (one load per model), unload, LRU eviction, aliases, start-up, failures."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.engine.model_pool import LoadedModel, ModelPool
from embedserve.engine.service import EmbeddingService
from embedserve.errors import EmbedServeError, ModelLoadError, ModelNotFound, NotReady
from embedserve.models.registry import ResolvedModel, aliases_for
from embedserve.settings import Settings


class FakeResolver:
    """Resolves any name to a fake folder; names starting with 'missing' are not found.

    `canonical` maps a short name (lower-case) to the full id it stands for, as an installed
    model package does ('all-minilm-l6-v2' -> 'sentence-transformers/all-MiniLM-L6-v2').
    `folders` gives some ids a real folder (to carry a sentence_bert_config.json).
    """

    def __init__(self, canonical: dict[str, str] | None = None, folders: dict[str, Path] | None = None):
        self.canonical = canonical or {}
        self.folders = folders or {}
        self.calls: list[str] = []

    def resolve(self, name: str, **policy) -> ResolvedModel:
        self.calls.append(name)
        if name.startswith("missing"):
            raise ModelNotFound(f"model '{name}' could not be found", param="model")
        model_id = self.canonical.get(name.lower(), name)
        path = self.folders.get(model_id, Path("/fake") / model_id)
        return ResolvedModel(model_id, path, "fake", aliases_for(model_id) | {name})


class CountingFactory:
    """A backend factory that counts its calls; it can be slow and can fail its first calls."""

    def __init__(self, *, delay: float = 0.0, fail_first: int = 0, **backend_options):
        self.delay = delay
        self.fail_first = fail_first
        self.backend_options = backend_options
        self.paths: list[Path] = []
        self.backends: list[FakeBackend] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.paths)

    def __call__(self, path: Path) -> FakeBackend:
        with self._lock:
            self.paths.append(path)
            attempt = len(self.paths)
        if self.delay:
            time.sleep(self.delay)
        if attempt <= self.fail_first:
            raise ModelLoadError(f"could not load model from {path}: injected failure {attempt}")
        backend = FakeBackend(**self.backend_options)
        with self._lock:
            self.backends.append(backend)
        return backend


def settings(**overrides) -> Settings:
    return Settings(**{"models": ("org/a",), "graceful_timeout": 5.0} | overrides)


def make_pool(factory: CountingFactory | None = None, resolver: FakeResolver | None = None, **overrides):
    factory = factory or CountingFactory()
    resolver = resolver or FakeResolver()
    return ModelPool(settings(**overrides), factory, resolver=resolver), factory, resolver


def make_service(factory: CountingFactory, resolver: FakeResolver | None = None, **overrides) -> EmbeddingService:
    return EmbeddingService(settings(**overrides), factory, resolver=resolver or FakeResolver())


def worker_is_closed(model: LoadedModel) -> bool:
    try:
        with model.worker.admit():
            return False
    except NotReady:
        return True


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_room_listeners_hear_each_request_leave_and_a_failing_one_costs_no_answer(caplog):
    service = make_service(CountingFactory())
    await service.pool.load_all(("org/a",))
    heard: list[int] = []
    service.when_room_frees(lambda: heard.append(1))

    def broken() -> None:
        raise RuntimeError("listener fault")

    service.when_room_frees(broken)
    result = await service.embed("org/a", ["one", "two"])
    assert len(result.vectors) == 2 and heard == [1]  # one request: one place freed
    assert "a queue-room listener failed" in caplog.text
    await service.pool.close()


# ---- on-demand loading ------------------------------------------------------------------


async def test_on_demand_load_then_served_from_the_pool():
    pool, factory, _ = make_pool()
    assert pool.models == [] and pool.default_model is None
    model = await pool.get_or_load("org/a")
    assert isinstance(model, LoadedModel)
    assert model.id == "org/a" and model.path == Path("/fake/org/a") and model.source == "fake"
    assert factory.paths == [Path("/fake/org/a")]
    assert model.worker.backend is factory.backends[0]
    assert pool.models == [model] and pool.default_model is model
    again = await pool.get_or_load("org/a")
    assert again is model and factory.calls == 1
    assert pool.get("org/a") is model
    await pool.close()


async def test_get_or_load_without_a_name_is_the_default_model_loading_it_again_only_when_none_is_loaded():
    pool, factory, resolver = make_pool(models=("org/start",))
    # nothing loaded (every model unloaded): the first start-up model comes back, under the operator's rules
    model = await pool.get_or_load(None)
    assert model.id == "org/start" and factory.calls == 1 and model.startup
    first = await pool.get_or_load("org/a")
    assert await pool.get_or_load(None) is model and factory.calls == 2  # a default is loaded: no load
    await pool.unload("org/start")
    assert await pool.get_or_load(None) is first and factory.calls == 2  # another model is the default now
    await pool.close()


async def test_without_load_on_demand_no_model_loaded_is_a_503_not_a_load():
    pool, factory, _ = make_pool(models=("org/start",), load_on_demand=False)
    with pytest.raises(NotReady) as info:
        await pool.get_or_load(None)
    assert info.value.status == 503 and info.value.retry_after >= 1 and factory.calls == 0
    assert "POST /model/load" in info.value.message
    await pool.close()


async def test_twenty_concurrent_requests_for_a_new_model_share_one_load():
    pool, factory, resolver = make_pool(CountingFactory(delay=0.2))
    results = await asyncio.gather(*(pool.get_or_load("org/new") for _ in range(20)))
    assert factory.calls == 1
    assert resolver.calls == ["org/new"]
    assert all(r is results[0] for r in results)
    assert [m.id for m in pool.models] == ["org/new"]
    await pool.close()


async def test_concurrent_loads_of_different_models_each_load_once():
    pool, factory, _ = make_pool(CountingFactory(delay=0.1))
    names = ["org/a", "org/b", "org/c"] * 5
    results = await asyncio.gather(*(pool.get_or_load(n) for n in names))
    assert factory.calls == 3
    assert sorted(p.as_posix() for p in factory.paths) == ["/fake/org/a", "/fake/org/b", "/fake/org/c"]
    for name, model in zip(names, results, strict=True):
        assert model.id == name and pool.get(name) is model
    await pool.close()


async def test_concurrent_first_requests_under_two_aliases_load_the_model_once():
    resolver = FakeResolver(canonical={"mini": "org/mini"})
    pool, factory, _ = make_pool(CountingFactory(delay=0.2), resolver)
    first, second = await asyncio.gather(pool.get_or_load("org/mini"), pool.get_or_load("mini"))
    try:
        assert factory.calls == 1
        assert first is second
    finally:
        await pool.close()
        await first.worker.close(0)
        await second.worker.close(0)


async def test_an_alias_after_the_load_reuses_the_model():
    resolver = FakeResolver(canonical={"mini": "org/mini"})
    pool, factory, _ = make_pool(resolver=resolver)
    model = await pool.get_or_load("org/mini")
    assert await pool.get_or_load("mini") is model
    assert await pool.get_or_load("MINI") is model
    assert factory.calls == 1
    await pool.close()


async def test_load_on_demand_off_refuses_a_model_that_is_not_loaded():
    pool, factory, resolver = make_pool(load_on_demand=False)
    with pytest.raises(ModelNotFound) as info:
        await pool.get_or_load("org/b")
    assert info.value.status == 404 and info.value.param == "model"
    assert "org/b" in info.value.message
    assert factory.calls == 0 and resolver.calls == []
    assert pool.models == []
    await pool.close()


async def test_load_on_demand_off_still_serves_the_start_up_models():
    pool, factory, _ = make_pool(load_on_demand=False)
    await pool.load_all(["org/a"])
    model = await pool.get_or_load("org/a")
    assert model.id == "org/a"
    with pytest.raises(ModelNotFound) as info:
        await pool.get_or_load("org/b")
    assert "org/a" in info.value.message  # says what is loaded
    assert factory.calls == 1
    await pool.close()


async def test_unknown_model_is_404_and_not_remembered():
    pool, factory, resolver = make_pool()
    for _ in range(2):
        with pytest.raises(ModelNotFound) as info:
            await pool.get_or_load("missing/model")
        assert info.value.status == 404
    assert resolver.calls == ["missing/model", "missing/model"]  # asked again, not cached
    assert factory.calls == 0 and pool.models == []
    await pool.close()


# ---- aliases ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["org/Model-A", "Model-A", "model-a", "ORG/MODEL-A", "org/model-a"])
async def test_aliases_full_id_last_part_any_case(name):
    pool, _, _ = make_pool()
    model = await pool.load("org/Model-A")
    assert pool.get(name) is model
    assert pool.find(name) is model
    await pool.close()


async def test_a_name_that_is_no_alias_is_not_found():
    pool, _, _ = make_pool()
    await pool.load("org/Model-A")
    for name in ("Model", "org", "org/Model-B", "other/Model-A-x"):
        assert pool.find(name) is None
        with pytest.raises(ModelNotFound):
            pool.get(name)
    await pool.close()


# ---- unload -----------------------------------------------------------------------------


async def test_unload_removes_the_model_and_closes_its_worker():
    pool, factory, _ = make_pool()
    model = await pool.load("org/a")
    assert not worker_is_closed(model)
    unloaded = await pool.unload("a")  # by alias
    assert unloaded is model
    assert pool.models == [] and pool.find("org/a") is None
    assert worker_is_closed(model)
    assert model.worker._task is not None and model.worker._task.done()
    with pytest.raises(NotReady, match="'a' was unloaded"):  # 503 for a while, not 404
        pool.get("a")
    # a later request loads it afresh
    reloaded = await pool.get_or_load("org/a")
    assert reloaded is not model and factory.calls == 2
    await pool.close()


async def test_unload_of_a_model_that_is_not_loaded_is_404():
    pool, _, _ = make_pool()
    with pytest.raises(ModelNotFound):
        await pool.unload("org/nothing")
    await pool.close()


async def test_a_request_in_flight_during_unload_completes():
    factory = CountingFactory()
    service = make_service(factory)
    model = await service.pool.load("org/a")
    backend: FakeBackend = model.worker.backend
    backend.delay = 0.3  # inference is slow: the request is mid-batch when the unload starts
    request = asyncio.create_task(service.embed("org/a", ["hello world"]))
    await wait_for(lambda: len(backend.batch_sizes) == 1)
    assert not request.done()

    await service.pool.unload("org/a")

    assert request.done()
    result = request.result()
    ids = backend.tokenize(["hello world"], truncate=True)[0]
    expected = backend.vector_for(ids)
    np.testing.assert_allclose(result.vectors[0], expected / np.linalg.norm(expected), rtol=1e-6)
    assert result.model == "org/a" and result.prompt_tokens == len(ids)
    assert worker_is_closed(model) and service.pool.models == []
    await service.pool.close()


async def test_requests_after_unload_load_the_model_again():
    factory = CountingFactory()
    service = make_service(factory)
    await service.embed("org/a", ["x"])
    await service.pool.unload("org/a")
    result = await service.embed("org/a", ["x"])
    assert result.model == "org/a" and factory.calls == 2
    await service.pool.close()


# ---- LRU eviction -----------------------------------------------------------------------


async def test_max_loaded_models_evicts_the_least_recently_used():
    pool, factory, _ = make_pool(max_loaded_models=2)
    a = await pool.get_or_load("org/a")
    b = await pool.get_or_load("org/b")
    await asyncio.sleep(0.001)
    assert await pool.get_or_load("org/a") is a  # a is now used more recently than b
    c = await pool.get_or_load("org/c")
    assert {m.id for m in pool.models} == {"org/a", "org/c"}
    assert pool.find("org/b") is None
    assert worker_is_closed(b)
    assert not worker_is_closed(a) and not worker_is_closed(c)
    assert factory.calls == 3
    await pool.close()


async def test_without_use_the_oldest_load_is_evicted():
    pool, _, _ = make_pool(max_loaded_models=2)
    a = await pool.get_or_load("org/a")
    await pool.get_or_load("org/b")
    await pool.get_or_load("org/c")
    assert {m.id for m in pool.models} == {"org/b", "org/c"}
    assert worker_is_closed(a)
    await pool.close()


async def test_an_embed_request_counts_as_use():
    factory = CountingFactory()
    service = make_service(factory, max_loaded_models=2)
    await service.embed("org/a", ["one"])
    await service.embed("org/b", ["two"])
    await asyncio.sleep(0.001)
    await service.embed("a", ["three"])  # by alias
    await service.embed("org/c", ["four"])
    assert {m.id for m in service.pool.models} == {"org/a", "org/c"}
    # the evicted model comes back on demand, evicting the now least recently used (org/a)
    await asyncio.sleep(0.001)
    await service.embed("org/c", ["five"])
    await service.embed("org/b", ["six"])
    assert {m.id for m in service.pool.models} == {"org/b", "org/c"}
    assert factory.calls == 4
    await service.pool.close()


async def test_max_loaded_models_zero_means_no_limit():
    pool, _, _ = make_pool(max_loaded_models=0)
    for i in range(6):
        await pool.get_or_load(f"org/m{i}")
    assert len(pool.models) == 6
    await pool.close()


async def test_max_loaded_models_one_keeps_only_the_newest():
    pool, _, _ = make_pool(max_loaded_models=1)
    a = await pool.get_or_load("org/a")
    b = await pool.get_or_load("org/b")
    assert pool.models == [b] and worker_is_closed(a)
    await pool.close()


# ---- start-up ---------------------------------------------------------------------------


async def test_requests_during_start_up_are_503_not_404():
    pool, factory, _ = make_pool(CountingFactory(delay=0.5))
    startup = asyncio.create_task(pool.load_all(["org/a", "org/b"]))
    await wait_for(lambda: factory.calls == 1)
    for name in ("org/a", "org/b", None, "org/unrelated"):
        with pytest.raises(NotReady) as info:
            pool.get(name)
        assert info.value.status == 503
        assert "org/a" in info.value.message and "org/b" in info.value.message
    with pytest.raises(NotReady):
        await pool.get_or_load("org/other")  # start-up is not the moment to load more
    await startup
    assert [m.id for m in pool.models] == ["org/a", "org/b"]
    assert factory.calls == 2  # nothing else was loaded
    assert pool.get(None).id == "org/a"
    with pytest.raises(ModelNotFound):
        pool.get("org/unrelated")  # after start-up, an unknown name is 404 again
    await pool.close()


async def test_a_failed_start_up_does_not_leave_the_pool_starting_forever():
    pool, factory, _ = make_pool(CountingFactory(fail_first=1))
    with pytest.raises(ModelLoadError):
        await pool.load_all(["org/a"])
    with pytest.raises(ModelNotFound):  # not NotReady: start-up is over
        pool.get("org/a")
    model = await pool.get_or_load("org/a")  # on demand it loads now
    assert model.id == "org/a" and factory.calls == 2
    await pool.close()


# ---- failing loads ----------------------------------------------------------------------


async def test_a_failing_load_surfaces_the_error_and_a_later_request_retries(caplog):
    pool, factory, _ = make_pool(CountingFactory(fail_first=1))
    with pytest.raises(ModelLoadError) as info:
        await pool.get_or_load("org/a")
    assert isinstance(info.value, EmbedServeError) and info.value.status == 424
    # the client reads the model's name, the server log the details (which name server paths)
    assert info.value.message == "model 'org/a' was found but could not be loaded; the server log says why"
    assert "injected failure 1" in caplog.text and "/fake/org/a" in caplog.text
    assert pool.models == []
    model = await pool.get_or_load("org/a")
    assert model.id == "org/a" and factory.calls == 2
    assert pool.get("org/a") is model
    await pool.close()


async def test_concurrent_callers_of_a_failing_load_all_get_the_error_from_one_attempt():
    pool, factory, _ = make_pool(CountingFactory(delay=0.1, fail_first=1))
    results = await asyncio.gather(*(pool.get_or_load("org/a") for _ in range(10)), return_exceptions=True)
    assert factory.calls == 1
    assert all(isinstance(r, ModelLoadError) for r in results), results
    model = await pool.get_or_load("org/a")
    assert factory.calls == 2 and model.id == "org/a"
    await pool.close()


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_load():
    pool, factory, _ = make_pool(CountingFactory(delay=0.2))
    impatient = asyncio.create_task(pool.get_or_load("org/a"))
    patient = asyncio.create_task(pool.get_or_load("org/a"))
    await asyncio.sleep(0.05)
    impatient.cancel()
    model = await patient
    assert model.id == "org/a" and factory.calls == 1
    await pool.close()


# ---- families through the pool ----------------------------------------------------------


async def test_family_prompts_and_length_are_applied_on_load():
    pool, _, _ = make_pool(CountingFactory(max_seq_length=16))
    model = await pool.get_or_load("intfloat/e5-small-v2")
    assert (model.prompts.family, model.prompts.source) == ("e5", "family")
    assert model.prompts.prefix("query") == "query: " and model.prompts.prefix("document") == "passage: "
    assert model.info.max_seq_length == 512  # the model declares none: the family's applies
    await pool.close()


async def test_a_declared_max_seq_length_keeps_the_model_own(tmp_path):
    folder = tmp_path / "e5"
    folder.mkdir()
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    resolver = FakeResolver(folders={"intfloat/e5-small-v2": folder})
    pool, _, _ = make_pool(CountingFactory(max_seq_length=16), resolver)
    model = await pool.get_or_load("intfloat/e5-small-v2")
    assert model.info.max_seq_length == 16
    assert model.prompts.prefix("query") == "query: "
    await pool.close()


async def test_the_model_own_prompts_beat_the_family_on_load():
    factory = CountingFactory(prompts={"query": "Q: ", "document": ""})
    pool, _, _ = make_pool(factory)
    model = await pool.get_or_load("intfloat/e5-small-v2")
    assert model.prompts.source == "model config"
    assert (model.prompts.prefix("query"), model.prompts.prefix("document")) == ("Q: ", "")
    await pool.close()


async def test_generic_model_keeps_its_length_and_gets_no_prefix():
    pool, _, _ = make_pool(CountingFactory(max_seq_length=16, prompts={"query": "", "document": ""}))
    model = await pool.get_or_load("acme/encoder")
    assert model.info.max_seq_length == 16
    assert model.prompts.source == "none"
    assert model.prompts.prefix("query") == model.prompts.prefix("document") == model.prompts.prefix(None) == ""
    await pool.close()


# ---- close ------------------------------------------------------------------------------


async def test_close_closes_every_worker():
    pool, _, _ = make_pool()
    models = [await pool.get_or_load(n) for n in ("org/a", "org/b")]
    await pool.close()
    assert pool.models == []
    assert all(worker_is_closed(m) for m in models)

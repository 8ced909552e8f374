"""The engine's handlers, reached over the real wire: the outputs equal the in-process worker's,
loads and unloads are announced to every front-end, and the pool's errors keep their status."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedserve.engine.engine_handlers import EngineHandlers
from embedserve.engine.ipc import EngineClient, EngineServer
from embedserve.engine.ipc_codec import info_from_dict, pack_sequences, unpack_outputs
from embedserve.errors import ModelNotFound, NotReady, Overloaded
from embedserve.models.tasks import Task
from tests.unit.engine.test_model_pool import CountingFactory, make_pool

ALL = frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR})


@pytest.fixture
async def engine(tmp_path):
    pool, factory, _ = make_pool(CountingFactory(tasks=ALL), max_queue=2)
    server = EngineServer({})
    handlers = EngineHandlers(pool, server)
    server.handlers = handlers.handlers()
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    events: list[dict] = []
    client = EngineClient(path, on_event=lambda event, body, arrays: events.append(body))
    await client.connect()
    yield pool, factory, client, events
    await client.close()
    await server.close()
    await pool.close()


async def test_encode_over_the_wire_equals_the_worker_in_process(engine):
    pool, _, client, events = engine
    result, _ = await client.call("load", {"name": "org/a"})
    model = pool.get("org/a")
    assert result["model"]["id"] == "org/a" and info_from_dict(result["model"]["info"]) == model.info
    assert [m["id"] for m in events[-1]["models"]] == ["org/a"]  # announced to the front-ends

    sequences = [model.worker.backend.tokenize([text], truncate=True)[0] for text in ("a b c", "hello", "x y")]
    header, arrays = await client.call("encode", {"model": "org/a", "tasks": sorted(ALL)}, pack_sequences(sequences))
    remote = unpack_outputs(header, arrays)
    with model.worker.admit() as admission:
        local = await model.worker.encode(sequences, admission, ALL)
    np.testing.assert_array_equal(remote.dense, local.dense)
    for a, b in zip(remote.sparse, local.sparse, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.values, b.values)
    for a, b in zip(remote.multivector, local.multivector, strict=True):
        np.testing.assert_array_equal(a, b)


async def test_unload_is_announced_and_then_encode_is_503(engine):
    _, _, client, events = engine
    await client.call("load", {"name": "org/a"})
    await client.call("unload", {"name": "org/a"})
    assert events[-1]["models"] == [] and "org/a" in events[-1]["unloaded"].values()  # and 503s, not 404s, for its names
    with pytest.raises(NotReady):
        await client.call("encode", {"model": "org/a", "tasks": ["embed"]}, pack_sequences([[1, 5, 2]]))
    with pytest.raises(ModelNotFound):
        await client.call("encode", {"model": "org/never", "tasks": ["embed"]}, pack_sequences([[1, 5, 2]]))


async def test_a_full_queue_in_the_engine_is_429_at_the_front_end(engine):
    pool, factory, client, _ = engine
    await client.call("load", {"name": "org/a"})
    factory.backends[0].delay = 0.3  # each batch takes a while: the queue (max 2) fills
    calls = [
        asyncio.create_task(client.call("encode", {"model": "org/a", "tasks": ["embed"]}, pack_sequences([[1, i, 2]])))
        for i in range(6)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert refused and served and len(refused) + len(served) == 6
    assert all(r.status == 429 and r.retry_after >= 1 for r in refused)

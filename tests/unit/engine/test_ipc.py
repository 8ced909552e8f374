"""The front-end/engine wire: arrays exact, answers matched by id, errors as their own class,
cancellation reaching the engine, and a lost engine failing calls at once with 503."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedserve.engine.ipc import EngineClient, EngineServer
from embedserve.errors import BackendFailure, NotReady, Overloaded, WrongTask


class Engine:
    """Handlers that echo, fail on demand, or wait until cancelled (recording it)."""

    def __init__(self):
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def embed(self, args, arrays):
        ids, lengths = arrays
        await asyncio.sleep(args.get("delay", 0))
        vectors = np.repeat(lengths.astype(np.float32)[:, None], 4, axis=1) + args["offset"]
        return {"tokens": int(lengths.sum()), "ids_seen": int(ids.size)}, [vectors, ids[::-1].copy()]

    async def full(self, args, arrays):
        raise Overloaded("the model's queue is full", retry_after=3)

    async def wrong(self, args, arrays):
        raise WrongTask("org/m", "sparse embeddings", ["embed"])

    async def crash(self, args, arrays):
        raise RuntimeError("secret path /home/x in a traceback")

    async def hang(self, args, arrays):
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return {}, []


@pytest.fixture
async def wire(tmp_path):
    engine = Engine()
    handlers = {name: getattr(engine, name) for name in ("embed", "full", "wrong", "crash", "hang")}
    server = EngineServer(handlers)
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    client = EngineClient(path)
    await client.connect()
    yield engine, server, client
    await client.close()
    await server.close()


async def test_arrays_go_and_come_back_exact_and_answers_find_their_callers(wire):
    _, _, client = wire
    ids = np.arange(10, dtype=np.int32)

    async def one(offset: float, delay: float):
        lengths = np.array([3, 7], dtype=np.int32)
        result, (vectors, back) = await client.call("embed", {"offset": offset, "delay": delay}, [ids, lengths])
        assert result == {"tokens": 10, "ids_seen": 10}
        np.testing.assert_array_equal(vectors, np.array([[3] * 4, [7] * 4], dtype=np.float32) + offset)
        assert vectors.dtype == np.float32 and back.dtype == np.int32
        np.testing.assert_array_equal(back, ids[::-1])

    # the slow ones answer last: every answer still reaches its own caller
    await asyncio.gather(*(one(float(i), 0.02 * (i % 3)) for i in range(30)))


async def test_engine_errors_arrive_as_their_own_class_status_and_retry_after(wire):
    _, _, client = wire
    with pytest.raises(Overloaded) as full:
        await client.call("full")
    assert full.value.status == 429 and full.value.retry_after == 3 and "queue is full" in full.value.message
    with pytest.raises(WrongTask) as wrong:
        await client.call("wrong")
    assert wrong.value.status == 400 and wrong.value.code == "model_task_unsupported"
    assert "does not do sparse embeddings" in wrong.value.message
    with pytest.raises(BackendFailure) as crash:
        await client.call("crash")
    assert crash.value.status == 500 and "/home/x" not in crash.value.message  # no internals cross the wire
    with pytest.raises(BackendFailure):
        await client.call("no-such-operation")


async def test_a_cancelled_call_cancels_the_engines_work(wire):
    engine, _, client = wire
    call = asyncio.create_task(client.call("hang"))
    await asyncio.wait_for(engine.started.wait(), 5)
    call.cancel()
    await asyncio.wait_for(engine.cancelled.wait(), 5)
    result, _ = await client.call("embed", {"offset": 0}, [np.zeros(1, np.int32), np.ones(1, np.int32)])
    assert result["tokens"] == 1  # the connection still serves


async def test_a_lost_engine_fails_calls_in_flight_and_later_ones_with_503(wire):
    engine, server, client = wire
    call = asyncio.create_task(client.call("hang"))
    await asyncio.wait_for(engine.started.wait(), 5)
    await server.close()  # the engine process dies: its end of every connection closes
    with pytest.raises(NotReady) as lost:
        await asyncio.wait_for(call, 5)
    assert lost.value.status == 503 and lost.value.retry_after >= 1
    with pytest.raises(NotReady):
        await client.call("embed", {"offset": 0}, [np.zeros(1, np.int32), np.ones(1, np.int32)])
    assert not client.connected


async def test_events_reach_every_front_end(tmp_path):
    server = EngineServer({})
    path = str(tmp_path / "engine.sock")
    await server.start(path)
    seen: list[list] = [[], []]
    clients = [EngineClient(path, on_event=lambda e, body, arrays, i=i: seen[i].append((e, body))) for i in (0, 1)]
    for client in clients:
        await client.connect()
    await asyncio.sleep(0.05)  # both connections accepted
    await server.broadcast("models", {"ids": ["org/a"]})
    for _ in range(100):
        if all(seen):
            break
        await asyncio.sleep(0.01)
    assert seen == [[("models", {"ids": ["org/a"]})]] * 2
    for client in clients:
        await client.close()
    await server.close()

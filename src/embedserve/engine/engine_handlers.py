"""The engine process's side of issue 16: what front-ends may ask of the model pool and workers.

The engine owns the one model pool (load, unload, on-demand and LRU rules, start-up models) and
each model's batching worker; front-ends hold a mirror of the model list and send token ids.

* `models`: every loaded model as a front-end needs it (ids, names, where its files are, its
  `ModelInfo`); also pushed to every front-end as the `models` event after each load or unload,
  so a model loaded through one front-end is served by all.
* `load` / `unload`: the pool's own `get_or_load` and `unload`, under the same rules as in one
  process (a request's name, or an admin's).
* `encode`: one request's token ids for a loaded model (by id) and the tasks it wants; admitted
  against the model's queue (a full queue is the front-end's 429), batched with every other
  front-end's requests, outputs back as raw arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedserve.engine.ipc import EngineServer, Handler, Message
from embedserve.engine.ipc_codec import info_to_dict, pack_outputs, unpack_sequences
from embedserve.engine.model_pool import LoadedModel, ModelPool
from embedserve.models.tasks import Task


def describe(model: LoadedModel) -> dict[str, Any]:
    """A loaded model as a front-end mirrors it (engine/ipc_codec.py `info_from_dict` reads its info)."""
    return {
        "id": model.id, "aliases": sorted(model.aliases), "source": model.source, "path": str(model.path),
        "info": info_to_dict(model.info), "loaded_as": model.loaded_as, "startup": model.startup,
        "loaded_at": model.loaded_at, "load_seconds": model.load_seconds, "memory_bytes": model.memory_bytes,
    }


class EngineHandlers:
    """Front-ends' requests on one pool; `server` (when given) hears of every change of the model list."""

    def __init__(self, pool: ModelPool, server: EngineServer | None = None):
        self.pool = pool
        self.server = server

    def handlers(self) -> dict[str, Handler]:
        return {"models": self.models, "load": self.load, "unload": self.unload, "encode": self.encode}

    def snapshot(self) -> dict[str, Any]:
        return {"models": [describe(m) for m in self.pool.models]}

    async def announce(self) -> None:
        """Tell every front-end the model list as it is now (after a load, an eviction, an unload)."""
        if self.server is not None:
            await self.server.broadcast("models", self.snapshot())

    async def models(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        return self.snapshot(), []

    async def load(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = await self.pool.get_or_load(args.get("name"), admin=bool(args.get("admin")))
        await self.announce()
        return {"model": describe(model)}, []

    async def unload(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = await self.pool.unload(args.get("name"))
        await self.announce()
        return {"model": model.id}, []

    async def encode(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = self.pool.get(args["model"])  # by id; an unloaded one is the usual 503
        sequences = unpack_sequences(arrays[0], arrays[1])
        types = unpack_sequences(arrays[2], arrays[3]) if len(arrays) == 4 else None
        tasks = frozenset(Task(task) for task in args["tasks"])
        with model.worker.admit() as admission:  # a full queue: Overloaded, the front-end's 429
            outputs = await model.worker.encode(sequences, admission, tasks, args.get("role"), types)
        return pack_outputs(outputs)

"""The engine process's side of issue 16: what front-ends may ask of the model pool and workers.

The engine owns the one model pool (load, unload, on-demand and LRU rules, start-up models),
each model's batching worker and the fine-tuning jobs; front-ends hold a mirror of the model
list (engine/remote.py) and send token ids.

* `models`: the snapshot a front-end mirrors: every loaded model (ids, names, where its files
  are, its `ModelInfo`, whether its batching loop is failing), the names that are reserved,
  unloaded, starting or loading (so a front-end answers the same 503 or 404 the engine would),
  and whether the start-up models are in. Also pushed to every front-end as the `models` event
  after each load or unload, so a model loaded through one front-end is served by all.
* `load` / `unload`: the pool's own `get_or_load` and `unload`, under the same rules as in one
  process; the answer carries the snapshot after the change.
* `encode`: one request's token ids for a loaded model (by id) and the tasks it wants; admitted
  against the model's queue (a full queue is the front-end's 429), batched with every other
  front-end's requests, outputs back as raw arrays.
* `activate`: a cross-encoder's activation of raw scores (its own module: sigmoid, identity...).
* `encode_texts`: a whole request for a model whose tokenizer only runs in the engine (a
  multi-vector model's head tokenizes), through the engine's `EmbeddingService`.
* `job_submit` / `job_cancel` / `job_resume`: fine-tuning jobs run as the engine's children; the
  front-ends read jobs from the shared store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedserve.engine.ipc import EngineServer, Handler, Message
from embedserve.engine.ipc_codec import info_to_dict, pack_outputs, unpack_sequences
from embedserve.engine.model_pool import LoadedModel, ModelPool
from embedserve.errors import BackendFailure
from embedserve.models.tasks import Task


def describe(model: LoadedModel) -> dict[str, Any]:
    """A loaded model as a front-end mirrors it (engine/ipc_codec.py `info_from_dict` reads its info)."""
    failure = model.worker.failure
    return {
        "id": model.id, "aliases": sorted(model.aliases), "source": model.source, "path": str(model.path),
        "info": info_to_dict(model.info), "loaded_as": model.loaded_as, "startup": model.startup,
        "loaded_at": model.loaded_at, "load_seconds": model.load_seconds, "memory_bytes": model.memory_bytes,
        "failure": None if failure is None else repr(failure),
    }


class EngineHandlers:
    """Front-ends' requests on one pool; `server` (when given) hears of every change of the model list.

    `service`: the engine's EmbeddingService on `pool` (for `encode_texts`); `jobs`: its JobManager;
    `remember`: a file where the names of request-loaded models are kept, so an engine restarted
    after a crash loads them again."""

    def __init__(self, pool: ModelPool, server: EngineServer | None = None, *, service=None, jobs=None,
                 remember: Path | None = None):
        self.pool = pool
        self.server = server
        self.service = service
        self.jobs = jobs
        self.remember = remember
        self.ready = False
        self.load_error: str | None = None
        self.restoring = False  # loading the models the engine before this one had

    def handlers(self) -> dict[str, Handler]:
        return {
            "models": self.models, "load": self.load, "unload": self.unload, "encode": self.encode,
            "encode_texts": self.encode_texts, "activate": self.activate, "job_submit": self.job_submit, "job_cancel": self.job_cancel,
            "job_resume": self.job_resume,
        }

    def snapshot(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "models": [describe(m) for m in pool.models],
            "reserved": dict(pool._reserved), "unloaded": dict(pool._unloaded),
            "starting": sorted(pool._starting), "loading": sorted(pool._loads),
            "ready": self.ready, "load_error": self.load_error, "stamp": time.monotonic(),
        }

    async def announce(self) -> None:
        """Tell every front-end the model list as it is now (after a load, an eviction, an unload)."""
        if self.remember is not None and not self.restoring:  # a restarted engine's list stays until restored
            names = [m.loaded_as or m.id for m in self.pool.models if not m.startup]
            self.remember.write_text(json.dumps(names))
        if self.server is not None:
            await self.server.broadcast("models", self.snapshot())

    def remembered(self) -> list[str]:
        """The request-loaded models of the engine that ran before this one."""
        try:
            names = json.loads(self.remember.read_text()) if self.remember is not None else []
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str)]

    async def models(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        return self.snapshot(), []

    async def load(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = await self.pool.get_or_load(args.get("name"), admin=bool(args.get("admin")))
        await self.announce()
        return {"model": describe(model), "snapshot": self.snapshot()}, []

    async def unload(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = await self.pool.unload(args.get("name"))
        await self.announce()
        return {"model": model.id, "snapshot": self.snapshot()}, []

    async def encode(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        model = self.pool.get(args["model"])  # by id; an unloaded one is the usual 503
        sequences = unpack_sequences(arrays[0], arrays[1])
        types = unpack_sequences(arrays[2], arrays[3]) if len(arrays) == 4 else None
        tasks = frozenset(Task(task) for task in args["tasks"])
        with model.worker.admit() as admission:  # a full queue: Overloaded, the front-end's 429
            outputs = await model.worker.encode(sequences, admission, tasks, args.get("role"), types)
        return pack_outputs(outputs)

    async def activate(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        """A cross-encoder's own activation of its raw scores (a module of the model, so the engine's)."""
        model = self.pool.get(args["model"])
        return {}, [np.asarray(model.worker.backend.activate_scores(arrays[0]), dtype=np.float32)]

    async def encode_texts(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        from embedserve.backends.base import Outputs
        from embedserve.engine.service import SparseOptions

        if self.service is None:
            raise BackendFailure("this engine encodes token ids only")
        sparse = None
        if args.get("top_k") is not None or args.get("min_weight") is not None:
            sparse = SparseOptions(args.get("top_k"), args.get("min_weight"))
        result = await self.service.encode(
            args["model"], args["inputs"], frozenset(Task(t) for t in args["tasks"]),
            dimensions=args.get("dimensions"), normalize=args.get("normalize"), input_type=args.get("input_type"),
            sparse=sparse, truncate=args.get("truncate"), prompt_name=args.get("prompt_name"),
        )
        header, out = pack_outputs(Outputs(dense=result.dense, sparse=result.sparse, multivector=result.multivector))
        return {**header, "prompt_tokens": result.prompt_tokens}, out

    # ---- fine-tuning jobs: run here, read by the front-ends from the shared store ----------------

    async def job_submit(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        from embedserve.training.remote import job_request_from_dict

        job = await self._jobs().submit(job_request_from_dict(args["request"]))
        return {"id": job.id}, []

    async def job_cancel(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        return {"id": (await self._jobs().cancel(args["id"])).id}, []

    async def job_resume(self, args: dict[str, Any], arrays: list[np.ndarray]) -> Message:
        return {"id": (await self._jobs().resume(args["id"])).id}, []

    def _jobs(self):
        if self.jobs is None:
            raise BackendFailure("this engine runs no fine-tuning jobs")
        return self.jobs

"""A front-end process's view of the engine (issue 16): the same pool and service the routes use in
one process, with the model work done by the engine process over engine/ipc.py.

* `RemoteWorker` stands where a model's `ModelWorker` stands: its `backend` is the model's
  tokenizer only (backends/tokenizer_only.py), so tokenization happens here, on the front-end's
  core; `encode` sends the token ids and gets the raw arrays back. Admission is the engine's: its
  queue bound answers 429 through the error the engine raises.
* `RemotePool` is a `ModelPool` whose model list mirrors the engine's, from the engine's
  snapshot (asked for at connection, pushed as a `models` event after every load and unload, and
  asked for again every second, which also brings each model's health). Lookups, aliases and the
  503/404 a name gets are the base class's own code on the mirrored state; a load or an unload is
  the engine's operation, after which the mirror is brought up to date before the answer returns.
* `RemoteService` is the `EmbeddingService` on that pool. For a model whose tokenizer cannot run
  here (a multi-vector model tokenizes queries and documents in its own head), the whole request
  goes to the engine's service instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from embedserve.backends.base import Backend, ModelInfo, Outputs, TokenIds
from embedserve.backends.tokenizer_only import TokenizerOnlyBackend
from embedserve.engine.heap import freeze_long_lived
from embedserve.engine.ipc import EngineClient
from embedserve.engine.ipc_codec import info_from_dict, pack_sequences, unpack_outputs
from embedserve.engine.model_pool import LoadedModel, ModelPool
from embedserve.engine.pending import DENSE, Admission
from embedserve.engine import processing
from embedserve.engine.processing import Inputs
from embedserve.engine.service import EmbeddingService, EncodeResult, ScoreResult, SparseOptions
from embedserve.engine.worker import EngineObserver
from embedserve.errors import ModelLoadError, NotReady, Overloaded
from embedserve.models.families import profile_for
from embedserve.models.tasks import Task
from embedserve.settings import Settings

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0  # how often a front-end asks the engine for its snapshot unasked
RECONNECT_SECONDS = 0.1  # how often a front-end retries a lost engine


class EngineState:
    """What a front-end knows of the engine as a whole (its /health and /ready read it)."""

    def __init__(self) -> None:
        self.connected = False
        self.ready = False  # the engine's start-up models are in
        self.load_error: str | None = None


class RemoteWorker:
    """A model's worker, as a front-end sees it: tokenizer here, batching and weights in the engine."""

    def __init__(self, client: EngineClient, model_id: str, backend, max_queue: int):
        self.name = model_id
        self.backend = backend  # TokenizedInEngine: RemoteService sends its requests to the engine whole
        self.client = client
        self.max_queue = max_queue
        self.failure: str | None = None  # the engine's word that this model's batching loop died
        self._admitted = 0

    @property
    def depth(self) -> int:
        """This front-end's requests for the model in flight (the engine's queue is the bound)."""
        return self._admitted

    @property
    def room(self) -> int | None:
        """Unknown here: only the engine knows (its queue is shared by every front-end); a full
        queue there comes back as Overloaded (429)."""
        return None

    def overloaded(self) -> Overloaded:
        return Overloaded(f"model '{self.name}' has too many requests waiting; retry later")

    @contextmanager
    def admit(self) -> Iterator[Admission]:
        if self.failure is not None:
            raise NotReady(f"model '{self.name}' had an engine fault and is restarting; retry shortly")
        self._admitted += 1
        try:
            yield Admission()
        finally:
            self._admitted -= 1

    async def embed(self, sequences: Sequence[TokenIds], admission: Admission | None = None):
        return (await self.encode(sequences, admission, DENSE)).dense

    async def encode(
        self,
        sequences: Sequence[TokenIds],
        admission: Admission | None = None,
        tasks: frozenset[Task] = DENSE,
        role: str | None = None,
        types: Sequence[TokenIds] | None = None,
    ) -> Outputs:
        arrays = pack_sequences(sequences)
        if types is not None:
            arrays += pack_sequences(types)
        args = {"model": self.name, "tasks": sorted(t.value for t in tasks), "role": role}
        header, out = await self.client.call("encode", args, arrays)
        return unpack_outputs(header, out)

    async def close(self, timeout: float = 0.0) -> None:
        """Nothing to stop here: the engine owns the model."""


class RemotePool(ModelPool):
    def __init__(self, settings: Settings, client: EngineClient, engine: EngineState):
        super().__init__(settings, _no_backends)
        self.client = client
        self.engine = engine
        self._mirror_lock = asyncio.Lock()
        self._snapshot_at = 0.0

    # ---- the mirror ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask the engine for its snapshot and mirror it."""
        result, _ = await self.client.call("models")
        await self.apply(result)

    async def apply(self, snapshot: dict[str, Any]) -> None:
        """Mirror the engine's models and its naming state. Tokenizers of new models load off the loop;
        snapshots are applied one at a time, an older one never after a newer one."""
        async with self._mirror_lock:
            stamp = snapshot.get("stamp", 0.0)
            if stamp < self._snapshot_at:
                return
            self._snapshot_at = stamp
            models: dict[str, LoadedModel] = {}
            for entry in snapshot["models"]:
                models[entry["id"]] = await self._mirror(entry)
            if any(m is not self._models.get(i) for i, m in models.items()):
                freeze_long_lived()  # a new tokenizer's objects live as long as the model: out of the collector's walk
            self._models = models
            self._reserved = dict(snapshot.get("reserved", {}))
            self._unloaded = dict(snapshot.get("unloaded", {}))
            self._starting = set(snapshot.get("starting", ()))
            self._loads = dict.fromkeys(snapshot.get("loading", ()))  # names the engine is loading: 503, not 404
            self.engine.ready = bool(snapshot.get("ready"))
            self.engine.load_error = snapshot.get("load_error")

    async def _mirror(self, entry: dict[str, Any]) -> LoadedModel:
        info = info_from_dict(entry["info"])
        model = self._models.get(entry["id"])
        if model is None or str(model.path) != entry["path"] or model.info != info:
            backend = await asyncio.to_thread(_tokenizer_backend, Path(entry["path"]), info)
            worker = RemoteWorker(self.client, entry["id"], backend, self.settings.max_queue)
            prompts = await asyncio.to_thread(
                profile_for, entry["id"], Path(entry["path"]), dict(info.prompts), info.default_prompt_name
            )
            model = LoadedModel(
                entry["id"], frozenset(entry["aliases"]), entry["source"], Path(entry["path"]), worker,  # type: ignore[arg-type]
                prompts, loaded_at=entry["loaded_at"], load_seconds=entry["load_seconds"],
                memory_bytes=entry["memory_bytes"], startup=entry["startup"], loaded_as=entry["loaded_as"],
            )
        model.aliases = frozenset(entry["aliases"])
        model.worker.failure = entry.get("failure")
        return model

    # ---- what the routes call -------------------------------------------------------------------

    def get(self, name: str | None) -> LoadedModel:
        if not self.engine.connected:
            raise NotReady("the engine is restarting; retry shortly", retry_after=1)
        return super().get(name)

    async def get_or_load(self, name: str | None, *, admin: bool = False) -> LoadedModel:
        _, model = self.lookup(name)
        if model is not None:
            model.last_used = time.monotonic()
            return model
        if not self.engine.connected:
            raise NotReady("the engine is restarting; retry shortly", retry_after=1)
        # The engine decides (its rules, its pool); the mirror is current before the answer returns,
        # so a model another front-end loaded a moment ago is found too, never a 404.
        result, _ = await self.client.call("load", {"name": name, "admin": admin})
        await self.apply(result["snapshot"])
        return self.find(result["model"]["id"]) or self.get(result["model"]["id"])

    async def load(self, name: str, *, request: bool = False) -> LoadedModel:
        return await self.get_or_load(name)

    async def unload(self, name: str | None) -> LoadedModel:
        before = self.default_model if name is None else self.find(name)
        result, _ = await self.client.call("unload", {"name": name})
        await self.apply(result["snapshot"])
        if before is not None and before.id == result["model"]:
            return before
        return SimpleNamespace(id=result["model"])  # type: ignore[return-value]  # unloaded before this mirror saw it

    async def close(self) -> None:
        self._models = {}
        self._resolve_pool.shutdown(wait=False, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)


class RemoteService(EmbeddingService):
    """The encoding service of a front-end process: tokenizes here, runs in the engine."""

    def __init__(self, settings: Settings, client: EngineClient, engine: EngineState,
                 observer: EngineObserver | None = None):
        self.settings = settings
        self._observer = observer or EngineObserver()
        self.client = client
        self.engine = engine
        self.pool = RemotePool(settings, client, engine)

    async def encode(self, name: str | None, inputs: Inputs, tasks: frozenset[Task], **options: Any) -> EncodeResult:
        """`EmbeddingService.encode`; for a model tokenized by its own head in the engine, the whole request
        is the engine's (`options` are that method's keywords)."""
        processing.check_inputs(inputs, self.settings.max_inputs)  # before the model, as in one process
        model = await self.pool.get_or_load(name)
        if not isinstance(model.worker.backend, TokenizedInEngine):
            return await super().encode(name, inputs, tasks, **options)
        sparse: SparseOptions | None = options.pop("sparse", None)
        args = {
            **options, "model": model.id, "inputs": list(inputs), "tasks": sorted(t.value for t in tasks),
            "top_k": sparse.top_k if sparse else None, "min_weight": sparse.min_weight if sparse else None,
        }
        header, arrays = await self.client.call("encode_texts", args)
        outputs = unpack_outputs(header, arrays)
        return EncodeResult(model, outputs.dense, outputs.sparse, outputs.multivector, header["prompt_tokens"])

    async def score(
        self, name: str | None, query: str, documents: Sequence[str], *, raw: bool = False, truncate: bool | None = None
    ) -> ScoreResult:
        """Raw scores computed as usual; the model's activation (one of its modules) applied by the engine."""
        result = await super().score(name, query, documents, raw=True, truncate=truncate)
        if raw:
            return result
        _, (scores,) = await self.client.call("activate", {"model": result.model.id}, [result.scores])
        return dataclasses.replace(result, scores=scores)


class TokenizedInEngine:
    """The backend of a model whose tokenizer runs only in the engine: what it is, nothing more
    (RemoteService sends its requests to the engine whole)."""

    uses_roles = False

    def __init__(self, info: ModelInfo):
        self.info = info


def _tokenizer_backend(path: Path, info: ModelInfo) -> Backend | TokenizedInEngine:
    try:
        return TokenizerOnlyBackend(path, info)
    except ModelLoadError as exc:
        log.info("model at %s is tokenized in the engine: %s", path, exc)
        return TokenizedInEngine(info)


def _no_backends(path: Path) -> Backend:
    raise RuntimeError("a front-end process builds no backends: the engine loads models")


class EngineLink:
    """A front-end's connection to the engine, kept up: connects (again, after the engine was
    restarted) every RECONNECT_SECONDS, mirrors the snapshot at once and every REFRESH_SECONDS,
    and keeps the app's readiness (`state.ready`, `state.load_error`) the engine's."""

    def __init__(self, path: str, settings: Settings, app_state, observer: EngineObserver | None = None):
        self.engine = EngineState()
        self.client = EngineClient(path, on_event=self._event)
        self.service = RemoteService(settings, self.client, self.engine, observer)
        self.app_state = app_state
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep_up(), name="engine-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.client.close()
        self._sync()

    def _event(self, event: str, body: dict[str, Any], arrays) -> None:
        if event == "models":
            task = asyncio.get_running_loop().create_task(self._apply(body))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _apply(self, snapshot: dict[str, Any]) -> None:
        await self.service.pool.apply(snapshot)
        self._sync()

    def _sync(self) -> None:
        self.engine.connected = self.client.connected
        self.app_state.ready = self.engine.connected and self.engine.ready
        self.app_state.load_error = self.engine.load_error if self.engine.connected else None

    async def _keep_up(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if not self.client.connected:
                    self._sync()
                    await self.client.connect()
                    log.info("connected to the engine")
                    last_refresh = 0.0
                if time.monotonic() - last_refresh >= REFRESH_SECONDS:
                    self.engine.connected = True  # the snapshot call itself checks the connection
                    await self.service.pool.refresh()
                    last_refresh = time.monotonic()
            except (OSError, NotReady):
                pass  # not up yet, or just lost: /ready is 503 (synced below) until it is back
            except Exception:  # noqa: BLE001 - the link must outlive any one bad snapshot
                log.exception("engine link")
            self._sync()
            await asyncio.sleep(RECONNECT_SECONDS)

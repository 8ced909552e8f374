"""The set of loaded models: load at start or on demand, unload, evict the least recently used.

Concurrent requests for a model that is not loaded share one load (one task per model
name). Each model has its own worker; unloading drains its in-flight requests first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedserve.backends.base import Backend, ModelInfo
from embedserve.engine.worker import EngineObserver, ModelWorker
from embedserve.errors import ModelNotFound, NotReady
from embedserve.models.families import PromptProfile, declared_max_seq_length, profile_for
from embedserve.models.registry import ModelResolver, ResolvedModel
from embedserve.settings import Settings

log = logging.getLogger(__name__)

BackendFactory = Callable[[Path], Backend]


@dataclass(eq=False)
class LoadedModel:
    id: str
    aliases: frozenset[str]
    source: str
    path: Path
    worker: ModelWorker
    prompts: PromptProfile
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    load_seconds: float = 0.0
    memory_bytes: int | None = None  # growth of the process's resident memory while loading

    @property
    def info(self) -> ModelInfo:
        return self.worker.backend.info

    def matches(self, name: str) -> bool:
        return name in self.aliases or name.lower() in {a.lower() for a in self.aliases}


class ModelPool:
    def __init__(
        self,
        settings: Settings,
        backend_factory: BackendFactory,
        *,
        resolver: ModelResolver | None = None,
        observer: EngineObserver | None = None,
    ):
        self.settings = settings
        self._factory = backend_factory
        self._resolver = resolver or ModelResolver(models_dir=settings.models_dir, revision=settings.revision)
        self._observer = observer or EngineObserver()
        self._models: dict[str, LoadedModel] = {}
        self._loads: dict[str, asyncio.Task] = {}
        self._id_locks: dict[str, asyncio.Lock] = {}
        self._starting: set[str] = set()

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def default_model(self) -> LoadedModel | None:
        return next(iter(self._models.values()), None)

    def find(self, name: str) -> LoadedModel | None:
        return next((m for m in self._models.values() if m.matches(name)), None)

    def get(self, name: str | None) -> LoadedModel:
        """A loaded model by id or alias (any case); the default model when `name` is None."""
        model = self.default_model if name is None else self.find(name)
        if model is not None:
            model.last_used = time.monotonic()
            return model
        if self._starting:
            raise NotReady(f"models are still loading ({', '.join(sorted(self._starting))}); retry shortly")
        if name is None:
            raise ModelNotFound("no model is loaded", param="model")
        served = ", ".join(sorted(self._models)) or "none"
        raise ModelNotFound(f"model '{name}' is not loaded here (loaded: {served})", param="model")

    async def get_or_load(self, name: str | None) -> LoadedModel:
        """`get`, loading the model first when it is not loaded and on-demand loading is on."""
        if name is None or self.find(name) is not None or not self.settings.load_on_demand or self._starting:
            return self.get(name)
        return await self.load(name)

    async def load_all(self, names: Sequence[str]) -> None:
        """The start-up models; until each is in, requests get 503 (retryable), not 404."""
        self._starting.update(names)
        try:
            for name in names:
                await self.load(name)
        finally:
            self._starting.difference_update(names)

    async def load(self, name: str) -> LoadedModel:
        if (model := self.find(name)) is not None:
            return model
        task = self._loads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name))
            self._loads[name] = task
            task.add_done_callback(lambda _: self._loads.pop(name, None))
        return await asyncio.shield(task)

    async def _load(self, name: str) -> LoadedModel:
        resolved: ResolvedModel = await asyncio.to_thread(self._resolver.resolve, name)
        # Two names (aliases) can resolve to one model: serialise per resolved id, load once.
        async with self._id_locks.setdefault(resolved.id, asyncio.Lock()):
            if (model := self._models.get(resolved.id)) is not None:
                model.aliases = model.aliases | {name}
                return model
            return await self._build(name, resolved)

    async def _build(self, name: str, resolved: ResolvedModel) -> LoadedModel:
        started = time.perf_counter()
        rss_before = resident_bytes()
        backend = await asyncio.to_thread(self._factory, resolved.path)
        rss_after = resident_bytes()
        info = backend.info
        prompts = profile_for(resolved.id, resolved.path, dict(info.prompts), info.default_prompt_name)
        if prompts.max_seq_length and declared_max_seq_length(resolved.path) is None:
            backend.limit_sequence_length(prompts.max_seq_length)
        worker = ModelWorker(
            resolved.id,
            backend,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            observer=self._observer,
            threads=self.settings.model_workers,
        )
        worker.start()
        seconds = time.perf_counter() - started
        model = LoadedModel(
            resolved.id, resolved.aliases | {name}, resolved.source, resolved.path, worker, prompts,
            load_seconds=round(seconds, 3),
            memory_bytes=max(0, rss_after - rss_before) if rss_before is not None and rss_after is not None else None,
        )
        self._models[resolved.id] = model
        self._observer.model_loaded(model.id, backend.info, model.memory_bytes)
        log.info("model ready", extra={"model": resolved.id, "source": resolved.source, "seconds": round(seconds, 2)})
        await self._evict(keep=model)
        return model

    async def unload(self, name: str | None) -> LoadedModel:
        model = self.get(name)
        self._models.pop(model.id, None)
        self._observer.model_unloaded(model.id)
        await model.worker.close(self.settings.graceful_timeout)
        log.info("model unloaded", extra={"model": model.id})
        return model

    async def _evict(self, keep: LoadedModel) -> None:
        limit = self.settings.max_loaded_models
        while limit and len(self._models) > limit:
            victim = min((m for m in self._models.values() if m is not keep), key=lambda m: m.last_used)
            log.info("evicting least recently used model", extra={"model": victim.id})
            await self.unload(victim.id)

    async def close(self) -> None:
        for task in list(self._loads.values()):
            task.cancel()
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(m.worker.close(self.settings.graceful_timeout) for m in models))


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None where that can't be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

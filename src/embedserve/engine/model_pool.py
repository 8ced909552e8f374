"""The set of loaded models: load at start or on demand, unload, evict, within bounds.

Who may load what. The operator's `--model` names load at start-up, may be paths, and are
never evicted by a model a request loaded. A request (any route's `model`, `/model/load`)
loads only by name (models/registry.py): under --models-dir, an installed model package,
or a Hub id matching --allow-models while on-demand loading is on; and it can never take a
name already in use: the ids and aliases of the start-up models stay theirs even after an
unload, and a newly loaded model only gets the aliases nobody else holds. One folder named
several ways (`m/`, `m/.`, `x/../x/m`) is one model.

Bounds. Models loaded by requests are capped in number (--max-loaded-models) and in resident
memory (--max-models-memory-mib, each model's growth of the process measured as it loads);
past either, the least recently used request-loaded model is evicted; a model whose weights
alone exceed the memory ceiling is refused before it is loaded. Names are resolved on a small
thread pool of their own, a request waiting at most --hub-timeout for the Hub, so a stalled
Hub can't take the threads every request needs. Models build one at a time (one thread), so
each one's memory is measured alone.

States a client sees: a model loading at start-up, one being loaded by someone else (where
this route does not load), one that was unloaded, or no model at all: 503 with Retry-After
(it will come, or can be loaded again); a name that resolves to nothing: 404; a model found but
failing to load: 424, the details in the server log only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path

from embedserve.backends.base import Backend, ModelInfo
from embedserve.engine.heap import freeze_long_lived
from embedserve.engine.memory import resident_bytes, usable_memory_bytes, weights_on_disk
from embedserve.engine.worker import EngineObserver, ModelWorker
from embedserve.errors import HubTimeout, ModelLoadError, ModelNotFound, ModelTooLarge, NotReady, shown
from embedserve.models.families import PromptProfile, declared_max_seq_length, profile_for
from embedserve.models.registry import ModelResolver, ResolvedModel
from embedserve.settings import Settings

log = logging.getLogger(__name__)

BackendFactory = Callable[[Path], Backend]
RESOLVER_THREADS = 4  # names resolved (and Hub downloads waited for) at once; more wait their turn
LOADING_RETRY_AFTER = 5  # seconds: what a 503 for a model still loading suggests


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
    startup: bool = False  # an operator's model: never evicted to make room for a request's
    loaded_as: str = ""  # the name it was loaded by: a --model value or a request's model name

    @property
    def short_name(self) -> str:
        """The last part of the name it was loaded by (`all-MiniLM-L6-v2`, `my-model` for a folder),
        or its id when another loaded model also answers to that."""
        short = (self.loaded_as or self.id).rstrip("/").split("/")[-1]
        return short if self.matches(short) else self.id

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
        self.room_listeners: list[Callable[[], None]] = []  # called when a request leaves a model's queue
        self._models: dict[str, LoadedModel] = {}
        self._loads: dict[str, asyncio.Task] = {}
        self._starting: set[str] = set()
        self._reserved: dict[str, str] = {}  # lower-case name -> id of the start-up model it belongs to
        self._unloaded: dict[str, str] = {}  # lower-case name -> id of an unloaded model (503, not 404)
        self._build_lock = asyncio.Lock()
        self._resolve_pool = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve")
        self._build_pool = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.memory_limit = memory_limit(settings)
        self._alias_targets = settings.alias_targets()

    def _room_freed(self) -> None:
        for listener in self.room_listeners:
            try:
                listener()
            except Exception:  # runs as a request leaves: a listener's fault must not become its answer
                log.exception("a queue-room listener failed")

    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    def loaded(self):
        """The loaded models, as a view (no copy): for checks on every request."""
        return self._models.values()

    @property
    def default_model(self) -> LoadedModel | None:
        return next(iter(self._models.values()), None)

    def find(self, name: str) -> LoadedModel | None:
        return next((m for m in self._models.values() if m.matches(name)), None)

    def lookup(self, name: str | None) -> tuple[str | None, LoadedModel | None]:
        """The name a request means and its loaded model (None: not loaded). A loaded model called
        `name` wins; else a --model-alias (or built-in one, such as OpenAI's model names) maps it,
        None meaning the default model. One pass over the loaded models when `name` is served."""
        if name is None:
            return None, self.default_model
        model = self.find(name)
        if model is not None or name.lower() not in self._alias_targets:
            return name, model
        target = self._alias_targets[name.lower()]
        return target, self.default_model if target is None else self.find(target)

    def get(self, name: str | None) -> LoadedModel:
        """A loaded model by id or alias (any case); the default model when `name` is None."""
        name, model = self.lookup(name)
        if model is not None:
            model.last_used = time.monotonic()
            return model
        if self._starting:
            raise NotReady(
                f"models are still loading ({', '.join(sorted(self._starting))}); retry shortly",
                retry_after=LOADING_RETRY_AFTER,
            )
        if name is None:
            if self.settings.load_on_demand:  # the Embeddings Generator's words for the same state
                raise NotReady("No model is currently loaded. Model will be loaded on first embedding request.")
            raise NotReady("no model is loaded at the moment; retry once one is loaded (POST /model/load)")
        if name.lower() in {loading.lower() for loading in self._loads}:
            raise NotReady(f"model {shown(name)} is loading; retry shortly", retry_after=LOADING_RETRY_AFTER)
        if name.lower() in self._unloaded:
            raise NotReady(f"model {shown(name)} was unloaded; retry once it is loaded again")
        served = ", ".join(sorted(self._models)) or "none"
        raise ModelNotFound(f"model {shown(name)} is not loaded here (loaded: {served})", param="model")

    async def get_or_load(self, name: str | None, *, admin: bool = False) -> LoadedModel:
        """`get`, loading the model a request names first when it is not loaded and on-demand loading is on.
        `admin` (POST /model/load): under --no-load-on-demand, a start-up model that was unloaded may be
        loaded back; the set of models stays the operator's, and embedding requests never load one."""
        target, model = self.lookup(name)
        if model is not None:
            model.last_used = time.monotonic()
            return model
        startup_model = admin and target is not None and target.lower() in self._reserved
        if self._starting or not (self.settings.load_on_demand or startup_model):
            return self.get(name)  # the right 503 or 404
        if target is None:
            # The default model was asked for and nothing is loaded (POST /model/unload): as the Embeddings
            # Generator did, the next embedding request brings it back, under the operator's rules, not a request's.
            return await self.load(self.settings.models[0])
        # A start-up model's name always means that model, whoever asks for it and however spelt.
        return await self.load(self._reserved.get(target.lower(), target), request=True)

    async def load_all(self, names: Sequence[str]) -> None:
        """The start-up models; until each is in, requests get 503 (retryable), not 404."""
        self._starting.update(names)
        try:
            for name in names:
                await self.load(name)
        finally:
            self._starting.difference_update(names)

    async def load(self, name: str, *, request: bool = False) -> LoadedModel:
        """Load `name` (once, however many callers ask at the same time). `request`: the name came
        from a client, so the request rules above apply; otherwise it is the operator's."""
        if (model := self.find(name)) is not None:
            return model
        task = self._loads.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(name, request))
            self._loads[name] = task
            task.add_done_callback(lambda _: self._loads.pop(name, None))
        return await asyncio.shield(task)

    async def _load(self, name: str, request: bool) -> LoadedModel:
        resolved = await self._resolve(name, request)
        async with self._build_lock:
            existing = self._models.get(resolved.id) or next(
                (m for m in self._models.values() if m.path == resolved.path), None
            )
            if existing is not None:
                existing.aliases |= self._free_names({name}, existing.id)
                return existing
            startup = not request or resolved.id.lower() in self._reserved
            if request and not startup:
                await self._make_room(resolved)
            return await self._build(name, resolved, startup=startup, request=request)

    async def resolve_request(self, name: str) -> ResolvedModel:
        """Where a model a client names lives, under the request rules (--allow-models, no paths), without loading it."""
        return await self._resolve(name, request=True)

    async def _resolve(self, name: str, request: bool) -> ResolvedModel:
        loop = asyncio.get_running_loop()
        if not request:
            return await loop.run_in_executor(self._resolve_pool, self._resolver.resolve, name)
        hub_allowed = self.settings.load_on_demand and any(
            fnmatchcase(name.lower(), pattern.lower()) for pattern in self.settings.allow_models
        )
        resolve = partial(
            self._resolver.resolve, name, paths=self.settings.allow_request_paths, hub_allowed=hub_allowed
        )
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._resolve_pool, resolve), timeout=self.settings.hub_timeout
            )
        except TimeoutError:
            raise HubTimeout(
                f"model {shown(name)}: the Hugging Face Hub did not answer within {self.settings.hub_timeout:g} s"
            ) from None
        except ModelNotFound as exc:
            if exc.detail:
                log.info("model %s not found: %s", shown(name), exc.detail)
            raise

    async def _build(self, name: str, resolved: ResolvedModel, *, startup: bool, request: bool) -> LoadedModel:
        started = time.perf_counter()
        rss_before = resident_bytes()
        try:
            backend = await asyncio.get_running_loop().run_in_executor(self._build_pool, self._factory, resolved.path)
        except Exception as exc:
            if not request:  # the operator's own model: the whole story, in the log and on /ready
                raise
            log.warning("model %s could not be loaded: %s", shown(name), exc, exc_info=not isinstance(exc, ModelLoadError))
            raise ModelLoadError(
                f"model {shown(name)} was found but could not be loaded; the server log says why", param="model"
            ) from None
        rss_after = resident_bytes()
        prompts = configure(backend, resolved.id, resolved.path)
        worker = ModelWorker(
            resolved.id,
            backend,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            observer=self._observer,
            threads=self.settings.model_workers,
            request_timeout=self.settings.request_timeout,
            on_room=self._room_freed,
        )
        worker.start()
        seconds = time.perf_counter() - started
        model = LoadedModel(
            resolved.id, self._free_names(resolved.aliases | {name}, resolved.id), resolved.source, resolved.path,
            worker, prompts,
            load_seconds=round(seconds, 3),
            memory_bytes=max(0, rss_after - rss_before) if rss_before is not None and rss_after is not None else None,
            startup=startup,
            loaded_as=name,
        )
        self._models[resolved.id] = model
        for alias in model.aliases:
            self._unloaded.pop(alias.lower(), None)
            if startup:
                self._reserved[alias.lower()] = model.id
        self._observer.model_loaded(model.id, backend.info, model.memory_bytes)
        freeze_long_lived()  # the model's objects live as long as it does: no collection walks them again
        log.info("model ready", extra={"model": resolved.id, "source": resolved.source, "seconds": round(seconds, 2)})
        if not startup:
            await self._evict(keep=model)
        return model

    def _free_names(self, names: set[str] | frozenset[str], model_id: str) -> frozenset[str]:
        """The names `model_id` may answer to: its own id, and each other name no other model holds."""
        taken = {a.lower() for m in self._models.values() if m.id != model_id for a in m.aliases}
        return frozenset(
            n for n in names
            if n == model_id or (n.lower() not in taken and self._reserved.get(n.lower(), model_id) == model_id)
        )

    async def _make_room(self, resolved: ResolvedModel) -> None:
        """Before loading a request's model: refuse one too big for the ceiling, evict to fit one that isn't."""
        estimate = await asyncio.to_thread(weights_on_disk, resolved.path)
        if self.memory_limit and estimate > self.memory_limit:
            raise ModelTooLarge(
                f"model {shown(resolved.id)} needs at least {estimate >> 20} MiB, more than the "
                f"{self.memory_limit >> 20} MiB models loaded by requests may use here"
            )
        await self._evict(incoming=1, incoming_bytes=estimate)

    async def _evict(self, keep: LoadedModel | None = None, incoming: int = 0, incoming_bytes: int = 0) -> None:
        """Unload the least recently used request-loaded models until the bounds hold."""
        count_limit, memory_limit = self.settings.max_loaded_models, self.memory_limit
        while True:
            loaded = [m for m in self._models.values() if not m.startup]
            used = sum(m.memory_bytes or 0 for m in loaded)
            over_count = count_limit and len(loaded) + incoming > count_limit
            over_memory = memory_limit and used + incoming_bytes > memory_limit
            victims = [m for m in loaded if m is not keep]
            if not (over_count or over_memory):
                return
            if not victims:
                if keep is not None and over_memory:
                    await self.unload(keep.id)
                    raise ModelTooLarge(
                        f"model {shown(keep.id)} took {(keep.memory_bytes or 0) >> 20} MiB, more than the "
                        f"{memory_limit >> 20} MiB models loaded by requests may use here"
                    )
                return
            victim = min(victims, key=lambda m: m.last_used)
            log.info("evicting least recently used model", extra={"model": victim.id})
            await self.unload(victim.id)

    async def unload(self, name: str | None) -> LoadedModel:
        """Unload a loaded model (the default one when unnamed); 404 when there is no such model loaded."""
        model = self.default_model if name is None else self.find(name)
        if model is None:
            served = ", ".join(sorted(self._models)) or "none"
            what = "no model is loaded" if name is None else f"model {shown(name)} is not loaded here"
            raise ModelNotFound(f"{what} (loaded: {served})", param="model")
        self._models.pop(model.id, None)
        for alias in model.aliases:
            self._unloaded[alias.lower()] = model.id
        self._observer.model_unloaded(model.id)
        await model.worker.close(self.settings.graceful_timeout)
        gc.unfreeze()  # its objects (cycles included) are collectable again; the next load freezes anew
        log.info("model unloaded", extra={"model": model.id})
        return model

    async def close(self) -> None:
        for task in list(self._loads.values()):
            task.cancel()
        models, self._models = list(self._models.values()), {}
        await asyncio.gather(*(m.worker.close(self.settings.graceful_timeout) for m in models))
        self._resolve_pool.shutdown(wait=False, cancel_futures=True)
        self._build_pool.shutdown(wait=False, cancel_futures=True)


def configure(backend: Backend, model_id: str, path: Path) -> PromptProfile:
    """A freshly built backend as its family serves it: the model's prompt profile, and the family's
    length limit where the model declares none (engine/model_pool.py and corpus/encoder.py alike)."""
    info = backend.info
    prompts = profile_for(model_id, path, dict(info.prompts), info.default_prompt_name)
    if prompts.max_seq_length and declared_max_seq_length(path) is None:
        backend.limit_sequence_length(prompts.max_seq_length)
    return prompts


def memory_limit(settings: Settings) -> int:
    """Bytes request-loaded models may take: the setting, else half of what this process may use."""
    if settings.max_models_memory_mib:
        return settings.max_models_memory_mib << 20
    usable = usable_memory_bytes()
    return usable // 2 if usable else 0

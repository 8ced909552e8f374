"""Ray Serve's model multiplexing for embedserve replicas: a model is routed to the replicas that hold it.

A client (or a gateway in front of Ray) names the model in Ray's header `serve_multiplexed_model_id`
(`serve-multiplexed-model-id` works too), as well as in the body as always. Ray's proxy sends a
request with that header to a replica that already holds the model when one does (else to the one
holding fewest), so each request-loaded model lives on few replicas instead of being loaded on
every replica a request happens to reach. The header only routes: the body's model (or the default
model when the body names none) is what answers, exactly as without Ray.

In the replica, `MultiplexedModels` runs inside the request pipeline (after the key check: a client
without a key loads nothing) on inference routes, and hands the header's model id to Ray's
`serve.multiplexed` loader, which (once per id) loads it through the replica's own model pool,
under the same rules as a request naming it (--allow-models, --models-dir, --max-loaded-models,
the memory ceiling; errors answered in the route's shape), and reports the replica's models to
Ray's router. Ray keeps at most `max_models_per_replica(settings)` ids per replica and evicts the
least recently used one: then a model a request loaded is unloaded from the pool too (an
operator's --model never is), so Ray's view of where models live follows the pool's.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from embedserve.api.middleware import send_error
from embedserve.api.routing import ROUTE, Scope as RouteScope, route_scope
from embedserve.engine.model_pool import LoadedModel, ModelPool
from embedserve.errors import EmbedServeError, ModelNotFound
from embedserve.settings import Settings

log = logging.getLogger(__name__)


def max_models_per_replica(settings: Settings) -> int:
    """Ray's per-replica bound on model ids: --max-loaded-models (0, no bound: -1 to Ray).

    The same bound as the pool's, so that Ray evicts (and the pool unloads) before the pool would
    have to evict on its own behind Ray's back. A start-up model named in the header takes a place
    in Ray's count although the pool never evicts it: then Ray evicts a request-loaded model one
    load early, which keeps the pool under its bound. Models loaded by requests without the header
    are the pool's alone; when the pool evicts a model Ray still counts here, a request Ray sends
    here for it loads it again (slower once, never wrong)."""
    return settings.max_loaded_models or -1


class ReplicaModel:
    """What Ray's multiplexing keeps for one model id on a replica.

    Ray calls `__del__` when it evicts the id (in a worker thread); Python may call it again when
    the object is collected (in any thread, the event loop's included). So it only schedules the
    unload on the replica's loop, once, and never waits for it.
    """

    def __init__(self, pool: ModelPool, model: LoadedModel, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.model_id = model.id
        self.startup = model.startup
        self.loop = loop
        self.released = False

    async def _unload(self) -> None:
        try:
            await self.pool.unload(self.model_id)
        except ModelNotFound:
            pass  # the pool evicted it already

    def __del__(self) -> None:
        if self.released or self.startup:
            return
        self.released = True
        try:
            asyncio.run_coroutine_threadsafe(self._unload(), self.loop)
        except RuntimeError:
            return  # the loop is closed: the replica is stopping, and its models with it
        log.info("Ray evicted model %s from this replica: unloading it", self.model_id)


def multiplexed_loader(settings: Settings, pool_of):
    """Ray's loader for this replica (`pool_of()`: the replica's model pool, once its app exists).

    A plain function, not a method: `serve.multiplexed` keeps its cache on the function object."""

    async def load_replica_model(model_id: str) -> ReplicaModel:
        pool = pool_of()
        model = await pool.get_or_load(model_id)
        return ReplicaModel(pool, model, asyncio.get_running_loop())

    return serve.multiplexed(max_num_models_per_replica=max_models_per_replica(settings))(load_replica_model)


class MultiplexedModels:
    """Loads the model a request's `serve_multiplexed_model_id` header names, through Ray's loader."""

    def __init__(self, app, *, load) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and route_scope(scope.get(ROUTE)) is RouteScope.EMBED:
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                try:
                    await self.load(model_id)
                except EmbedServeError as exc:
                    await send_error(send, exc, scope=scope)
                    return
        await self.app(scope, receive, send)

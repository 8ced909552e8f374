"""Builds the FastAPI application: routes, error handlers, middleware, model loading."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from embedserve import __version__
from embedserve.api import (
    encode, encodings, flask_compat, generator, hybrid, infinity, openai, ops, rerank, score, tei, vectorize,
)
from embedserve.api import cohere
from embedserve.api import files, fine_tune, fine_tuning
from embedserve.api import tei_predict, tei_root, tei_tools
from embedserve.api import kserve
from embedserve.api import playground
from embedserve.api.auth import AuthMiddleware, KeyStore
from embedserve.api.embeddings_lane import EmbeddingsLane
from embedserve.api.errors import install_error_handlers
from embedserve.api.exchange import BodyMiddleware
from embedserve.api.middleware import QueueFullMiddleware, RejectionSummary, RequestContextMiddleware
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import RouteTable, document_security
from embedserve.engine.model_pool import BackendFactory
from embedserve.engine.service import EmbeddingService
from embedserve.metrics import Metrics
from embedserve.models.registry import ModelResolver
from embedserve.settings import Settings
from embedserve.training.manager import JobManager

log = logging.getLogger(__name__)

# Every route the app serves, one router per API family; the route table middleware matches
# requests against (api/routing.py) is built from these same route objects.
ROUTERS = (
    openai.router, ops.router, flask_compat.router, generator.router, encode.router, vectorize.router,
    hybrid.router, tei.router, tei_predict.router, tei_tools.router, tei_root.router,
    encodings.router, rerank.router, score.router, infinity.router,
    cohere.router, fine_tune.router, fine_tuning.router, files.router,
    kserve.router, playground.router,
)


def default_backend_factory(settings: Settings) -> BackendFactory:
    def build(path):
        from embedserve.backends.factory import build_backend

        return build_backend(settings, path)

    return build


def create_app(
    settings: Settings,
    *,
    backend_factory: BackendFactory | None = None,
    resolver: ModelResolver | None = None,
    on_load_failure: Callable[[Exception], None] | None = None,
    embeddings_lane: bool = True,
    training_command: Sequence[str] | None = None,
    engine_socket: str | None = None,
    inner_middleware: Sequence[tuple[type, dict]] = (),
) -> FastAPI:
    """The app. Models load in the background after start-up so /health answers meanwhile.

    embeddings_lane: serve well-formed POST /v1/embeddings past FastAPI (api/embeddings_lane.py);
    off only in the test that checks both answer alike.
    training_command: the fine-tuning runner (`python -m embedserve.training.run`); tests pass a fake.
    engine_socket: a front-end process of `--api-processes` (serve.py): the models, their batching and
    the fine-tuning jobs live in the engine process listening there (engine/remote.py).
    inner_middleware: (class, options) pairs run inside the pipeline, after the key check and the body
    are done and around the routes (a Ray Serve replica's model multiplexing, deploy/ray_serve.py).
    """
    metrics = Metrics()
    keys = KeyStore(settings)  # a bad key file stops start-up here, before any model loads
    link = None
    if engine_socket is not None:
        from embedserve.engine.remote import EngineLink
        from embedserve.training.remote import RemoteJobManager

        link = EngineLink(engine_socket, settings, None, observer=metrics)
        service: EmbeddingService = link.service
        training: JobManager = RemoteJobManager(settings, link.client)
    else:
        service = EmbeddingService(
            settings, backend_factory or default_backend_factory(settings), resolver=resolver, observer=metrics
        )
        training = JobManager(settings, command=training_command)

    async def load_all() -> None:
        try:
            await service.pool.load_all(settings.models)
        except Exception as exc:  # noqa: BLE001 - reported on /ready and in the log
            log.error("could not load models: %s", exc)
            app.state.load_error = str(exc)
            if on_load_failure is not None:
                on_load_failure(exc)
            return
        app.state.ready = True

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await training.start()  # marks jobs a previous server left running as interrupted
        reload_keys_on_sighup(keys)
        if link is not None:  # the engine loads the models; its state is mirrored
            link.start()
            yield
            app.state.draining = True
            await link.close()
            await training.stop()
            await service.pool.close()
            return
        loader = asyncio.create_task(load_all())
        app.state.loader = loader
        yield
        app.state.draining = True
        loader.cancel()
        await training.stop()  # running jobs are stopped and marked interrupted
        await service.pool.close()

    app = FastAPI(
        title="embedserve",
        version=__version__,
        description="Self-hosted text-embedding inference: OpenAI-compatible, dynamically batched.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        # Observability is Prometheus (/metrics) and JSON logs. FastAPI's built-in OpenTelemetry
        # hook asked for the global tracer provider on every request (~6% of the event loop
        # under single-sentence traffic) even with none configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Declared in ops.py instead, each with its scope like every other route.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.keys = keys
    app.state.service = service
    app.state.metrics = metrics
    app.state.training = training
    app.state.ready = False
    app.state.started_at = time.monotonic()  # /health's uptime
    app.state.draining = False
    app.state.load_error = None
    app.state.rejections = RejectionSummary()  # 429s, logged as one line per period
    if link is not None:
        link.app_state = app.state
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    routes = app.state.routes = RouteTable([route for router in ROUTERS for route in router.routes])
    schema = app.openapi
    app.openapi = lambda: app.openapi_schema or document_security(schema(), settings, keys.enabled)

    # Outermost last: route match, request id, metrics and log around everything, then CORS,
    # so that even a 401 or a 413 carries the CORS headers a browser needs to read it; then
    # the key check and the full-queue check, before any body is read; the lane is innermost,
    # so all of them apply to what it answers.
    if embeddings_lane:
        route = next(r for r in openai.router.routes if getattr(r, "endpoint", None) is openai.create_embeddings)
        app.add_middleware(EmbeddingsLane, state=app.state, route=route)
    for middleware, options in inner_middleware:
        app.add_middleware(middleware, **options)
    app.add_middleware(
        BodyMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
        route_limits={files.upload_file: files.upload_limit(settings)},  # a training file may be larger
    )
    app.add_middleware(QueueFullMiddleware, service=service)
    app.add_middleware(AuthMiddleware, keys=keys, protect_metrics=settings.protect_metrics)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-Id", "Retry-After", "retry-after-ms"],
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, routes=routes, rejections=app.state.rejections)
    return app


def reload_keys_on_sighup(keys: KeyStore) -> None:
    """`kill -HUP` re-reads --api-key-file. Only where the loop runs in the main thread (the
    server process); an app run by a test client in a thread has no signals to take."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP not available here; API keys reload only at start")

"""Ray Serve: N replicas of the whole server (app, batcher, models) behind Ray's HTTP proxies (issue 17).

Each replica is one Ray actor running `create_app(settings)`, the same FastAPI app `embedserve serve`
runs, mounted with `serve.ingress`; Ray's proxy (one per node) takes the HTTP connection and hands
each request to a replica. Nothing in the app changes: routes, auth, errors, batching and metrics
are the single process's own, so a replica answers exactly what the plain server answers.

Three ways to start it, one settings object behind all of them:
* `embedserve serve --ray [--replicas N] [--ray-address ADDR]`: `run_ray(settings)` below, from
  server.run_server. Flags and EMBEDSERVE_* variables as always.
* `serve run deploy/ray-serve.yaml` / `serve deploy deploy/ray-serve.yaml`: the config names
  `app_builder`, whose `args` are Settings fields (`Settings(**args)`, so EMBEDSERVE_* variables,
  e.g. the config's `runtime_env.env_vars`, fill in what args leave out).
* Python: `serve.run(build_app(settings), route_prefix="/")`.

How settings travel: the Settings object itself is bound to the deployment, so Ray pickles it
into every replica. A pickled pydantic model keeps its SecretStr values (the API keys);
`model_dump(mode="json")` would not (it writes "**********"), and re-reading the environment in
the replica would take the settings of whatever node the replica lands on. So a replica runs with
exactly the settings of the process that deployed it (paths such as --cache-dir included: they
must exist on every node).

Models per replica: Ray's model multiplexing (deploy/ray_multiplex.py) routes a request whose
`serve_multiplexed_model_id` header names a model to a replica that holds it, and loads it on the
replica it reaches when none does. A body Ray lost when it retried a request: BodyHandoff below.

Lifespan and health: Ray Serve runs the ingress app's ASGI lifespan in each replica (uvicorn's
LifespanOn, before the replica's first health check, and its shutdown when the replica stops), so
the app's own start-up runs: models load in the background, as in one process. `check_health` is
the app's /ready: while the start-up models load it waits for them (Ray's first health check is
part of a replica's start-up, so a replica takes traffic only once its models are in, and
`serve.run` returns only then), and afterwards it fails while /ready would answer 503 (a load
error, a model's loop that died, draining), so Ray replaces a replica that stays unready.

max_ongoing_requests: our batcher forms batches only from requests the replica already holds. A
single-sentence request fills 1/--max-batch-size of a batch, so a replica needs about
--max-batch-size requests in hand to fill one batch, and --model-workers batches computing while
the next one forms: (model_workers + 1) x max_batch_size (192 with the defaults). Fewer leaves
batches part-empty however much traffic waits at the proxy (Ray's default, 5, would cap a
replica at 5-input batches for single-sentence traffic); more only moves the queue from Ray's
proxy, where a request can still go to whichever replica frees up first, into one replica's
batcher, where it waits behind that replica alone. It never exceeds --max-queue, so the replica's
own 429 is not what a client sees because of Ray's routing. The proxy's queue is bounded too
(`max_queued_requests` = --max-queue per proxy): past it Ray answers 503 instead of queueing
without end. Bulk requests (32 inputs each) fill batches with far fewer requests in hand.

The batcher sits in each replica: batches form only within a replica, so N replicas need N times
the concurrency to fill their batches. On GPU nodes the unit is one replica per GPU
(--ray-replica-gpus 1): each replica is the plain server on its GPU, batching for that GPU.
`--api-processes` (processes.py, engine/remote.py) is the other axis, within a replica: its
front-end processes do HTTP, validation and tokenization on the host's spare cores for one engine
process that owns the GPU and batches everything, which is what keeps one GPU busy. A Ray replica
is one process, so that split does not apply inside it (a replica runs --api-processes 1); Ray's
proxies and the replicas' own event loops take its place across the cluster. Fractional GPUs
(--ray-replica-gpus 0.5: two replicas share one GPU) give the GPU two independent batchers, i.e.
two half-full batches where one process would form one full one, each replica holding its own copy
of the weights. Neither GPU variant could be measured here (no GPU on this machine);
docs/scale-out.md has the CPU measurements and the reasoning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sys
import threading
from types import SimpleNamespace
from typing import Any

from ray import serve

from embedserve.deploy.ray_multiplex import MultiplexedModels, multiplexed_loader
from embedserve.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "embedserve"
DEPLOYMENT_NAME = "EmbedServe"
HEALTH_CHECK_PERIOD_S = 5.0
BODY_HANDOFF_S = 5.0  # BodyHandoff: how long a replica waits for the first message of a request's body


def max_ongoing_requests(settings: Settings) -> int:
    """What one replica is sent at once (the module docstring says why)."""
    if settings.ray_max_ongoing_requests:
        return settings.ray_max_ongoing_requests
    return max(1, min(settings.max_queue, (settings.model_workers + 1) * settings.max_batch_size))


def replica_settings(settings: Settings) -> Settings:
    """The settings a replica runs with: one process (no --api-processes split: Ray is the front
    end), and, with --threads 0, the threads of the CPUs Ray reserved for it rather than every core
    of its node (which the node's other replicas use too)."""
    update: dict[str, Any] = {"api_processes": "1", "ray": False}
    if settings.threads == 0 and settings.ray_replica_cpus >= 1:
        update["threads"] = max(1, int(settings.ray_replica_cpus) // settings.model_workers)
    elif settings.threads == 0:
        update["threads"] = 1
    return settings.model_copy(update=update)


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve's deployment options, all from our settings."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": max_ongoing_requests(settings),
        "max_queued_requests": settings.max_queue,
        "ray_actor_options": {"num_cpus": settings.ray_replica_cpus, "num_gpus": settings.ray_replica_gpus},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        # a check waits for the start-up models only once (at start); afterwards it reads a flag
        "health_check_timeout_s": 30.0,
        # Ray waits this long for a stopping replica's in-flight requests (--graceful-timeout)
        "graceful_shutdown_timeout_s": settings.graceful_timeout or 3600.0,
    }
    if settings.ray_max_replicas > settings.replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.replicas,
            "initial_replicas": settings.replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.max_batch_size,
        }
    else:
        options["num_replicas"] = settings.replicas
    return options


def http_options(settings: Settings) -> dict[str, Any]:
    """The proxies' HTTP options: our address, keep-alive, TLS, and a bound on any request's time."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "keep_alive_timeout_s": max(1, math.ceil(settings.idle_timeout)),
    }
    if settings.request_timeout:
        # Our app answers 503 at --request-timeout; the proxy's own bound comes later and covers a
        # replica that died (or a node that vanished) with the request in it.
        options["request_timeout_s"] = settings.request_timeout + 10.0
    if settings.ssl_keyfile is not None and settings.ssl_certfile is not None:
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
        options["ssl_certfile"] = str(settings.ssl_certfile)
    return options


class OneRequestIdHeader:
    """Ray's proxy adds X-Request-Id to every response (the id it passed in, which our app takes as the
    request's id too); the app's own copy is dropped so that a response carries the header once."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_one(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_one)


class BodyHandoff:
    """A request body that Ray's proxy lost in a retry is answered 503 (retry it), never awaited forever.

    A replica does not get the body with the request: it asks the proxy for it, message by message
    (`receive_asgi_messages`), and the proxy hands each message out once. When a replica dies right
    after taking the body but before the proxy has read the replica's "accepted" reply, the proxy
    retries the request on another replica, and there the body never comes: the proxy has nothing
    left to hand out, so the request waited until its client gave up (seen here: 30 s, a client's
    timeout; with a patient client, --request-timeout + 10 s, the proxy's bound). Ray 2.60's router
    does this retry for every request, and nothing tells the replica a request is a retry.

    The proxy starts reading the client's body when the request arrives, before any replica asks
    for it, so a replica asking for the first message normally gets it at once. Hence: the first
    message must come within BODY_HANDOFF_S, and a body that ends short of its Content-Length was
    cut by the same retry. Either way the app is told the client left (it stops without running
    anything) and the client gets a 503 with Retry-After: the request never ran, so sending it
    again is safe. The rest of a body that started coming is the app's --body-timeout's, as in one
    process. A client that waits more than BODY_HANDOFF_S between its headers and its body's
    first byte gets the same 503; clients send both together (Expect: 100-continue is answered by
    the proxy, which asks for the body at once).
    """

    def __init__(self, app, handoff_s: float = BODY_HANDOFF_S) -> None:
        self.app = app
        self.handoff_s = handoff_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from embedserve.api.middleware import header, send_error
        from embedserve.errors import BodyLost

        declared = header(scope, b"content-length")
        expected = int(declared) if declared.isdigit() else None
        received = 0
        first = True
        lost: str | None = None
        started = False

        async def handed_off_receive():
            nonlocal received, first, lost
            if lost is not None:
                return {"type": "http.disconnect"}
            if first:
                first = False
                try:
                    message = await asyncio.wait_for(receive(), self.handoff_s)
                except TimeoutError:
                    lost = f"the request's body did not arrive within {self.handoff_s:g} s"
                    return {"type": "http.disconnect"}
            else:
                message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False) and expected is not None and received != expected:
                    lost = f"the request's body ended after {received} of its {expected} bytes"
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, handed_off_receive, watched_send)
        if lost is not None and not started:
            log.warning("request %s: %s (lost in a retry by Ray's proxy); answered 503", scope.get("path"), lost)
            await send_error(send, BodyLost(f"{lost}; it was not run: send it again"), scope=scope)


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class EmbedServe:
    """One replica: the app and its engine, built in the replica from the deployer's Settings."""

    def __init__(self, settings: Settings) -> None:
        from embedserve.logs import configure_logging
        from embedserve.server import quiet_third_parties

        quiet_third_parties()
        self.settings = replica_settings(settings)
        configure_logging(self.settings.log_level, self.settings.log_format)
        # Ray's model multiplexing (deploy/ray_multiplex.py): the app exists once Ray has built it
        self.load_multiplexed = multiplexed_loader(self.settings, lambda: self.app.state.service.pool)

    def __serve_build_asgi_app__(self):
        """Called by Ray after __init__; Ray then runs this app's lifespan (which starts loading)."""
        from embedserve.api.app import create_app

        app = create_app(self.settings, inner_middleware=[(MultiplexedModels, {"load": self.load_multiplexed})])
        app.add_middleware(BodyHandoff)
        app.add_middleware(OneRequestIdHeader)
        return app

    async def check_health(self) -> None:
        """The app's /ready: waits for the start-up models the first time, then fails when /ready would."""
        from embedserve.api.ops import server_status

        state = self.app.state
        loader = getattr(state, "loader", None)
        if loader is not None and not loader.done():
            await asyncio.shield(loader)  # load_all reports its own failure in state.load_error
        status = server_status(SimpleNamespace(app=self.app))
        if status != "healthy":
            detail = f": {state.load_error}" if state.load_error else ""
            raise RuntimeError(f"replica is {status}{detail}")


def build_app(settings: Settings):
    """The Ray Serve application (`serve.run(build_app(settings), route_prefix="/")`)."""
    return EmbedServe.options(**deployment_options(settings)).bind(settings)


def app_builder(args: dict[str, Any]):
    """For Serve config files (deploy/ray-serve.yaml): `args` are Settings fields (`max_batch_size`
    or `max-batch-size`), env EMBEDSERVE_* fill in the rest, as for `embedserve serve`."""
    fields = {str(key).replace("-", "_"): value for key, value in (args or {}).items()}
    return build_app(Settings(**fields))


def wait_for_signal() -> int:
    """Block until SIGTERM or SIGINT; returns the signal."""
    got: list[int] = []
    stop = threading.Event()

    def handler(signum, frame) -> None:
        got.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return got[0]


def run_ray(settings: Settings) -> None:
    """`embedserve serve --ray`: deploy, serve until SIGTERM/SIGINT, then take it down.

    With --ray-address the cluster is someone else's: only our application is deleted at the end
    (Ray drains its replicas for --graceful-timeout), and Serve keeps running for other apps. With
    none, the local Ray started here is shut down with Serve.
    """
    import ray

    own_cluster = settings.ray_address is None
    if own_cluster:  # a new local Ray (address="local": never someone's `ray start` by accident)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    status = 0
    try:
        serve.start(http_options=http_options(settings))
        log.info("deploying %d replica(s) of %s", settings.replicas, ", ".join(settings.models))
        try:
            serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
        except Exception as exc:  # noqa: BLE001 - reported, and the exit code says so
            log.error("Ray Serve deployment failed: %s", exc)
            status = 1
        else:
            scheme = "https" if settings.ssl_certfile else "http"
            log.info(
                "serving on %s://%s:%d through Ray Serve (%d replica(s))",
                scheme, settings.host, settings.port, settings.replicas,
            )
            signum = wait_for_signal()
            log.info("%s: stopping", signal.Signals(signum).name)
    finally:
        try:
            if own_cluster:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        finally:
            ray.shutdown()
    if status:
        sys.exit(status)

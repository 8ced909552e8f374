"""Ray Serve (issue 17): `embedserve serve --ray --replicas 2` and deploy/ray-serve.yaml on a real
two-node local Ray cluster (ray.cluster_utils.Cluster, one CPU per node, one replica per node),
checked through Ray Serve's HTTP proxy against the plain single-process app on the same model."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from .conftest import SENTENCES, cosines, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "ray-serve.yaml"
KEY = "sk-ray-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The same settings for the plain app and for every replica: exact fp32, one worker of one thread
# (one CPU per Ray node).
SERVER_FLAGS = ["--backend", "torch", "--dtype", "fp32", "--model-workers", "1", "--threads", "1"]
SETTINGS = {"backend": "torch", "dtype": "fp32", "model_workers": 1, "threads": 1}


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text() if log else ''}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout}s:\n{log.read_text()[-5000:] if log else ''}")


def replica_states(app: str = "embedserve") -> dict:
    from ray import serve

    status = serve.status().applications.get(app)
    return dict(status.deployments["EmbedServe"].replica_states) if status else {}


def replica_actors() -> list[str]:
    import ray

    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::embedserve#")
    )


@pytest.fixture(scope="module")
def cluster():
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the nodes' workers: the replicas
    import ray
    from ray.cluster_utils import Cluster

    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        print(f"two-node cluster up in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture(scope="module")
def port(cluster) -> int:
    return free_port()


@pytest.fixture(scope="module")
def plain():
    """The single-process app on the same model and settings (what `embedserve serve` serves)."""
    from fastapi.testclient import TestClient

    from embedserve.api.app import create_app
    from embedserve.settings import Settings

    from ..conftest import wait_ready as wait_client

    app = create_app(Settings(**SETTINGS, api_keys=(KEY,)))
    with TestClient(app) as client:
        wait_client(client, timeout=120)
        yield client


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """Tiny models a request may load by name (acme/extra, acme/other, acme/third)."""
    from tests.support.tiny_models import build_generic

    root = tmp_path_factory.mktemp("ray-models")
    build_generic(root, "acme--extra")
    build_generic(root, "acme--other")
    build_generic(root, "acme--third")
    return root


@pytest.fixture(scope="module")
def ray_cli(cluster, port, models_dir, tmp_path_factory):
    """`embedserve serve --ray --replicas 2` joining the test cluster."""
    log = tmp_path_factory.mktemp("ray-cli") / "serve.log"
    cmd = [
        sys.executable, "-m", "embedserve", "serve", "--ray", "--replicas", "2", "--ray-address", cluster.address,
        "--host", "127.0.0.1", "--port", str(port), "--ray-replica-cpus", "1", "--api-key", KEY,
        "--log-format", "text", "--models-dir", str(models_dir), "--max-loaded-models", "1", *SERVER_FLAGS,
    ]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_ready(url, 150, process, log)  # through whichever replica is up first
        deadline = time.monotonic() + 150
        while replica_states() != {"RUNNING": 2} and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"embedserve serve --ray --replicas 2: ready in {time.monotonic() - started:.1f} s")
        yield process, url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_serves_vectors_equal_to_the_plain_server(ray_cli, plain, reference_model):
    process, url, _ = ray_cli
    assert replica_states() == {"RUNNING": 2}
    got = vectors(httpx.post(url + "/v1/embeddings", json={"input": SENTENCES}, headers=AUTH, timeout=60))
    expected = vectors(plain.post("/v1/embeddings", json={"input": SENTENCES}, headers=AUTH))
    assert got.shape == (len(SENTENCES), 384)
    assert cosines(got, expected).min() >= 0.99999
    assert cosines(got, reference_model.encode(SENTENCES)).min() >= 0.9999
    # one sentence a request, concurrently: both replicas answer, each with the plain server's vector
    with cf.ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(
            lambda i: vectors(httpx.post(
                url + "/v1/embeddings", json={"input": SENTENCES[i % 5]}, headers=AUTH, timeout=60
            ))[0],
            range(20),
        ))
    for i, vector in enumerate(singles):
        assert cosines(vector[None], expected[i % 5][None])[0] >= 0.99999
    response = httpx.post(url + "/v1/embeddings", json={"input": "hi"}, headers=AUTH, timeout=60)
    assert len(response.headers.get_list("x-request-id")) == 1  # Ray's proxy's, not twice


@pytest.mark.parametrize(
    "method, path, body, headers",
    [
        ("POST", "/v1/embeddings", {"input": "hi"}, {}),  # no key: 401
        ("POST", "/v1/embeddings", {"input": "hi"}, {"Authorization": "Bearer sk-wrong"}),  # wrong key: 401
        ("POST", "/v1/embeddings", {"input": "hi", "model": "no-such-org/no-such-model"}, AUTH),  # 404
        ("POST", "/v1/embeddings", {"input": 5}, AUTH),  # 422
        ("POST", "/v1/embeddings", {"model": "all-MiniLM-L6-v2"}, AUTH),  # 422: no input
        ("POST", "/v1/embeddings", b"{not json", AUTH),  # 400
        ("GET", "/v1/embeddings", None, AUTH),  # 405
        ("GET", "/no/such/route", None, AUTH),  # 404
        ("GET", "/ready", None, {}),  # open
    ],
)
def test_keys_and_errors_answer_as_the_plain_server(ray_cli, plain, method, path, body, headers):
    _, url, _ = ray_cli
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    if isinstance(body, bytes):
        headers = {**headers, "Content-Type": "application/json"}
    got = httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)
    want = plain.request(method, path, headers=headers, **kwargs)
    assert got.status_code == want.status_code, (got.text, want.text)
    assert got.status_code != 200 or path == "/ready"
    assert got.json() == want.json()
    assert got.headers.get("www-authenticate") == want.headers.get("www-authenticate")


def replicas_holding(model_id: str) -> list[str]:
    """The replicas Ray's controller knows to hold `model_id` through model multiplexing."""
    import ray
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    replicas = ray.get(controller._dump_replica_states_for_testing.remote(DeploymentID("EmbedServe", "embedserve")))
    return sorted(r.replica_id.unique_id for r in replicas.get() if model_id in r.multiplexed_model_ids)


def wait_for_holders(model_id: str, count: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(holders := replicas_holding(model_id)) != count and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1.0)  # the controller knows; its push to the proxies' routers follows at once
    return holders


def load_by_header(url: str, model: str) -> np.ndarray:
    headers = {**AUTH, "serve_multiplexed_model_id": model}
    return vectors(httpx.post(url + "/v1/embeddings", json={"model": model, "input": SENTENCES}, headers=headers, timeout=120))


def test_a_model_named_in_rays_multiplexing_header_lives_on_one_replica_and_requests_go_there(ray_cli):
    _, url, _ = ray_cli
    body = {"model": "acme/extra", "input": SENTENCES}
    routed = {**AUTH, "serve_multiplexed_model_id": "acme/extra"}
    first = vectors(httpx.post(url + "/v1/embeddings", json=body, headers=routed, timeout=120))
    (holder,) = wait_for_holders("acme/extra", 1)
    with cf.ThreadPoolExecutor(4) as pool:  # concurrent, so both replicas are free to take them
        answers = list(pool.map(
            lambda _: vectors(httpx.post(url + "/v1/embeddings", json=body, headers=routed, timeout=60)), range(12)
        ))
    assert all(np.allclose(answer, first, atol=1e-6) for answer in answers)
    assert replicas_holding("acme/extra") == [holder]  # routed to the replica that holds it, loaded nowhere else
    # the nginx spelling of the header routes alike
    dashed = {**AUTH, "serve-multiplexed-model-id": "acme/extra"}
    assert np.allclose(vectors(httpx.post(url + "/v1/embeddings", json=body, headers=dashed, timeout=60)), first, atol=1e-6)
    assert replicas_holding("acme/extra") == [holder]

    # no key: 401 and nothing loads; an unknown model: the body's 404, in OpenAI's shape
    other = {"serve_multiplexed_model_id": "acme/other"}
    refused = httpx.post(url + "/v1/embeddings", json={"model": "acme/other", "input": "hi"}, headers=other, timeout=60)
    assert refused.status_code == 401
    time.sleep(2.0)  # a load would have been reported by now
    assert replicas_holding("acme/other") == []
    missing = httpx.post(
        url + "/v1/embeddings", json={"model": "acme/missing", "input": "hi"},
        headers={**AUTH, "serve_multiplexed_model_id": "acme/missing"}, timeout=60,
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model", missing.text

    # A model no replica holds goes to the replica holding fewest (Ray's rule): the other one.
    load_by_header(url, "acme/other")
    (other_holder,) = wait_for_holders("acme/other", 1)
    assert other_holder != holder
    # Now each holds one, and --max-loaded-models is 1: a third model takes the place of the one
    # where it lands, in that replica's pool and in Ray's routing alike.
    load_by_header(url, "acme/third")
    (third_holder,) = wait_for_holders("acme/third", 1)
    displaced = "acme/extra" if third_holder == holder else "acme/other"
    assert wait_for_holders(displaced, 0) == []
    kept = "acme/other" if displaced == "acme/extra" else "acme/extra"
    assert len(replicas_holding(kept)) == 1
    listing = httpx.get(url + "/v1/models", headers={**AUTH, "serve_multiplexed_model_id": "acme/third"}, timeout=60)
    served = {card["id"] for card in listing.json()["data"]}  # that replica's own pool
    assert "acme/third" in served and displaced not in served, served
    # whichever replica a request without the header reaches, the answer is the same
    plain_answer = vectors(httpx.post(url + "/v1/embeddings", json=body, headers=AUTH, timeout=120))
    assert np.allclose(plain_answer, first, atol=1e-6)


def test_a_replica_killed_under_load_fails_or_retries_its_requests_and_comes_back(ray_cli):
    import ray

    _, url, _ = ray_cli
    before = replica_actors()
    assert len(before) == 2
    outcomes: list[tuple[int | str, float]] = []
    stop = threading.Event()
    bound = 30.0  # no request may take longer (the proxy's own bound is --request-timeout + 10 s)

    def client(i: int) -> None:
        with httpx.Client(timeout=bound) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post(url + "/v1/embeddings", json={"input": SENTENCES[i % 5]}, headers=AUTH)
                    outcomes.append((response.status_code, time.monotonic() - started))
                except httpx.TimeoutException:
                    outcomes.append(("timeout", time.monotonic() - started))
                except httpx.HTTPError as exc:  # a connection the proxy dropped: failed, not hung
                    outcomes.append((type(exc).__name__, time.monotonic() - started))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    served_before_kill = sum(1 for status, _ in outcomes if status == 200)
    ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
    time.sleep(6.0)
    stop.set()
    for thread in threads:
        thread.join(bound + 5)
        assert not thread.is_alive(), "a request hung"
    statuses = [status for status, _ in outcomes]
    print(f"under load, replica killed: {len(outcomes)} requests, outcomes "
          f"{ {s: statuses.count(s) for s in set(statuses)} }, slowest {max(t for _, t in outcomes):.2f} s")
    assert served_before_kill > 0
    assert "timeout" not in statuses
    assert max(t for _, t in outcomes) < bound
    assert all(status == 200 or status in (500, 502, 503, 504) or isinstance(status, str) for status in statuses)
    assert statuses.count(200) > served_before_kill  # the other replica kept serving

    deadline = time.monotonic() + 240  # a new replica loads the model again; on 2 shared cores that took over 90 s once
    while time.monotonic() < deadline:
        actors = replica_actors()
        if replica_states() == {"RUNNING": 2} and len(actors) == 2 and before[0] not in actors:
            break
        time.sleep(1.0)
    assert replica_states() == {"RUNNING": 2}, replica_states()
    assert before[0] not in replica_actors()
    for i in range(10):
        response = httpx.post(url + "/v1/embeddings", json={"input": SENTENCES[i % 5]}, headers=AUTH, timeout=60)
        assert response.status_code == 200, response.text


def test_cli_stops_on_sigterm_and_removes_its_application(ray_cli):
    process, _, log = ray_cli
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-5000:]
    assert replica_states() == {}


def test_serve_config_file_is_valid_for_ray(cluster):
    from ray.serve.schema import ServeDeploySchema

    from embedserve.deploy.ray_serve import app_builder
    from ray._common.utils import import_attr

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (application,) = config.applications
    assert application.route_prefix == "/"
    assert import_attr(application.import_path) is app_builder
    from embedserve.settings import Settings

    assert set(application.args) <= set(Settings.model_fields)


def test_serve_config_file_deploys_on_the_cluster(cluster, port, plain, tmp_path):
    """`serve run --non-blocking` on (a copy of) deploy/ray-serve.yaml with this test's port, settings
    as args, and the API key as an EMBEDSERVE_ variable in its runtime_env (env applies to args)."""
    from ray import serve

    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    (application,) = config["applications"]
    application["args"].update(SETTINGS)
    application["runtime_env"]["env_vars"]["EMBEDSERVE_API_KEYS"] = KEY
    copy = tmp_path / "ray-serve.yaml"
    copy.write_text(yaml.safe_dump(config))
    serve_cli = Path(sys.executable).with_name("serve")
    started = time.monotonic()
    result = subprocess.run(
        [str(serve_cli), "run", "--non-blocking", "--address", cluster.address, str(copy)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 150)
        deadline = time.monotonic() + 60
        while replica_states() != {"RUNNING": 2} and time.monotonic() < deadline:
            time.sleep(0.5)
        print(f"serve run deploy/ray-serve.yaml: ready in {time.monotonic() - started:.1f} s")
        assert replica_states() == {"RUNNING": 2}
        assert httpx.post(url + "/v1/embeddings", json={"input": "hi"}, timeout=60).status_code == 401
        got = vectors(httpx.post(url + "/v1/embeddings", json={"input": SENTENCES}, headers=AUTH, timeout=60))
        expected = vectors(plain.post("/v1/embeddings", json={"input": SENTENCES}, headers=AUTH))
        assert cosines(got, expected).min() >= 0.99999
    finally:
        serve.delete("embedserve")

"""Operational surface: /health, /ready, /metrics, request ids, CORS, docs, /v1/models."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from embedserve import __version__
from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.models.registry import ResolvedModel, aliases_for
from embedserve.settings import Settings
from tests.support.api import MODEL
from tests.support.api import assert_error_envelope as assert_openai_error


class OneModelResolver:
    def resolve(self, name: str, **policy) -> ResolvedModel:
        return ResolvedModel(name, Path("/fake") / name, "fake", aliases_for(name))


def wait_for(client: TestClient, predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        health = client.get("/health").json()
        if predicate(health):
            return health
        assert time.monotonic() < deadline, f"gave up waiting, last /health: {health}"
        time.sleep(0.01)


# ---- /health and /ready -----------------------------------------------------------------


def test_health_when_loaded(client):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    uptime = body.pop("uptime")  # the Embeddings Generator's keys: uptime in seconds, model_loaded
    assert isinstance(uptime, float) and 0 <= uptime < 600
    assert body == {
        "status": "healthy", "version": __version__, "model": MODEL, "models": [MODEL], "model_status": {MODEL: "ready"},
        "model_loaded": True,
    }
    assert client.get("/health").json()["uptime"] >= uptime


def test_ready_when_loaded(client):
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


def test_model_that_fails_to_load():
    failures: list[Exception] = []

    def broken_factory(path):
        raise RuntimeError(f"cannot read weights at {path}")

    app = create_app(
        Settings(models=(MODEL,)),
        backend_factory=broken_factory,
        resolver=OneModelResolver(),
        on_load_failure=failures.append,
    )
    with TestClient(app) as client:
        health = wait_for(client, lambda h: h["status"] != "loading")
        assert (health["status"], health["model"], health["models"]) == ("error", None, [])

        r = client.get("/ready")
        error = assert_openai_error(r, 503, type_="server_error", code="not_ready")
        # open to anyone, so the reason (it may name server paths) stays in the log
        assert error["message"] == "server is error: a start-up model failed to load; the server log says why"
        assert r.headers.get("x-request-id") and int(r.headers["retry-after"]) >= 1
    assert len(failures) == 1 and "cannot read weights" in str(failures[0])


@pytest.fixture
def loading_client():
    """An app whose model stays loading until the test sets the event."""
    release = threading.Event()
    backend = FakeBackend()

    def slow_factory(path):
        release.wait(10)
        return backend

    app = create_app(Settings(models=(MODEL,)), backend_factory=slow_factory, resolver=OneModelResolver())
    with TestClient(app) as client:
        yield client, release
        release.set()


def test_health_answers_while_loading_and_ready_follows(loading_client):
    client, release = loading_client
    assert client.get("/health").json()["status"] == "loading"
    r = client.get("/ready")
    error = assert_openai_error(r, 503, type_="server_error", code="not_ready")
    assert error["message"] == "server is loading"
    release.set()
    wait_for(client, lambda h: h["status"] == "healthy")
    assert client.get("/ready").status_code == 200
    assert client.post("/v1/embeddings", json={"input": "now"}).status_code == 200


def test_polling_ready_while_loading_logs_no_errors(loading_client, caplog):
    # Orchestrators poll /ready during start-up: an expected 503 must not fill the log with errors.
    client, _ = loading_client
    with caplog.at_level("INFO"):
        assert client.get("/ready").status_code == 503
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 503
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert any("/ready" in r.getMessage() and "503" in r.getMessage() for r in caplog.records)  # still in the access log


@pytest.mark.parametrize("body", [{"input": "x"}, {"input": "x", "model": MODEL}], ids=["default", "named"])
def test_embeddings_while_loading_is_503(loading_client, body):
    client, _ = loading_client
    assert client.get("/health").json()["status"] == "loading"
    r = client.post("/v1/embeddings", json=body)
    assert_openai_error(r, 503, type_="server_error", code="not_ready")


# ---- /metrics ---------------------------------------------------------------------------


def metric_samples(client: TestClient) -> dict[str, list]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_metrics_after_requests(client):
    assert client.post("/v1/embeddings", json={"input": ["one two", "three"]}).status_code == 200
    assert client.post("/v1/embeddings", json={"input": ""}).status_code == 422
    samples = metric_samples(client)

    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in samples["embedserve_requests_total"]
    }
    assert requests[("/v1/embeddings", "POST", "200")] == 1
    assert requests[("/v1/embeddings", "POST", "422")] == 1

    durations = [s for s in samples["embedserve_request_duration_seconds_count"] if s.labels["route"] == "/v1/embeddings"]
    assert durations and durations[0].value == 2

    by_model = {name: [s for s in samples[name] if s.labels.get("model") == MODEL] for name in samples}
    assert by_model["embedserve_queue_time_seconds_count"][0].value >= 1
    assert by_model["embedserve_batch_size_count"][0].value >= 1
    assert by_model["embedserve_batch_size_sum"][0].value == 2  # both inputs were embedded
    assert by_model["embedserve_input_tokens_total"][0].value == (2 + 2) + (1 + 2)
    assert by_model["embedserve_queue_depth"][0].value == 0  # nothing left in flight


def test_metrics_label_unknown_routes_as_unmatched(client):
    client.get("/no/such/path/12345")
    samples = metric_samples(client)
    routes = {s.labels["route"] for s in samples["embedserve_requests_total"]}
    assert "unmatched" in routes
    assert not any("12345" in route for route in routes)


# ---- request ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/embeddings", {"json": {"input": "x"}}, 200),
        ("POST", "/v1/embeddings", {"json": {"input": []}}, 422),
        ("POST", "/v1/embeddings", {"json": {"input": "x", "model": "missing-model"}}, 404),
        ("GET", "/nowhere", {}, 404),
        ("GET", "/v1/embeddings", {}, 405),
        ("GET", "/health", {}, 200),
        ("GET", "/metrics", {}, 200),
    ],
)
def test_every_response_has_a_request_id(client, method, path, kwargs, status):
    r = client.request(method, path, **kwargs)
    assert r.status_code == status
    assert len(r.headers["x-request-id"]) >= 16
    again = client.request(method, path, **kwargs)
    assert again.headers["x-request-id"] != r.headers["x-request-id"]


def test_request_id_on_413(make_client):
    client = make_client(max_body_bytes=50)
    r = client.post("/v1/embeddings", json={"input": "x" * 100})
    assert r.status_code == 413
    assert r.headers.get("x-request-id")
    r = client.post("/v1/embeddings", json={"input": "x" * 100}, headers={"X-Request-Id": "big-1"})
    assert r.headers["x-request-id"] == "big-1"


@pytest.mark.parametrize("path", ["/v1/embeddings", "/nowhere"])
def test_incoming_request_id_is_echoed(client, path):
    r = client.post(path, json={"input": "x"}, headers={"X-Request-Id": "trace-abc-123"})
    assert r.headers["x-request-id"] == "trace-abc-123"
    assert r.headers.get_list("x-request-id") == ["trace-abc-123"]


def test_overlong_request_id_is_cut(client):
    r = client.get("/health", headers={"X-Request-Id": "a" * 500})
    assert r.headers["x-request-id"] == "a" * 128


# ---- CORS -------------------------------------------------------------------------------


def test_cors_preflight(client):
    r = client.options(
        "/v1/embeddings",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed


def test_cors_on_a_simple_request_exposes_request_id(client):
    r = client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": "https://app.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed


def test_cors_restricted_origins(make_client):
    client = make_client(cors_origins=("https://good.example",))
    good = client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": "https://good.example"})
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    bad = client.post("/v1/embeddings", json={"input": "x"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in bad.headers


# ---- docs -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages(client, path):
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "openapi.json" in r.text


def test_openapi_schema(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    schema = r.json()
    assert schema["info"]["title"] == "embedserve"
    assert "post" in schema["paths"]["/v1/embeddings"]
    for path in ("/v1/models", "/health", "/ready", "/metrics"):
        assert "get" in schema["paths"][path]


# ---- /v1/models -------------------------------------------------------------------------


def test_list_models(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"object", "data"} and body["object"] == "list"
    (card,) = body["data"]
    assert set(card) == {"id", "object", "created", "owned_by", "tasks"}
    assert card["id"] == MODEL and card["object"] == "model"
    assert isinstance(card["created"], int) and abs(card["created"] - time.time()) < 3600
    assert isinstance(card["owned_by"], str) and card["owned_by"]


@pytest.mark.parametrize("name", [MODEL, "fake-model"])
def test_retrieve_model(client, name):
    r = client.get(f"/v1/models/{name}")
    assert r.status_code == 200, r.text
    card = r.json()
    # KServe V1's model status shares the path: its `name` (as asked) and `ready` sit beside OpenAI's keys
    assert card.pop("name") == name and card.pop("ready") is True
    assert card == client.get("/v1/models").json()["data"][0]


def test_retrieve_unknown_model_is_404(client):
    r = client.get("/v1/models/nope")
    error = assert_openai_error(r, 404, type_="invalid_request_error", code="model_not_found")
    assert "'nope'" in error["message"]
    assert error["param"] == "model"

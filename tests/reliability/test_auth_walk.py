"""Every route of the app has a scope, and without the right key no request reaches the engine.

Walks the app's own route table (what FastAPI serves, the /v1/embeddings lane included), on
the fake backend so the engine's record of batches and the resolver's record of names show
whether anything got through.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from embedserve.api import embeddings_lane
from embedserve.api.app import ROUTERS, create_app
from embedserve.api.routing import ErrorShape, Scope, route_errors, route_scope
from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from embedserve.settings import Settings
from tests.conftest import FakeResolver, wait_ready
from tests.support.training import fake_command

OPEN = {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}  # KServe V2's probes too
OPEN |= {"/playground", "/playground/{asset}"}  # the page's static files; the API calls it makes carry the key
BODIES = {  # a body each route would serve with the right key, so only the key can stop it
    "/v1/embeddings": {"input": "hello"},
    "/embedding": {"id1": "hello"},
    "/embeddings": {"texts": ["hello"], "model_name": "org/other"},
    "/v1/encode": {"input": ["hello"]},
    "/vectorize": {"text": "hello"},
    "/vectorize-batch": {"items": ["hello"]},
    "/vectorize-hybrid": {"text": "hello", "return_colbert": True},
    "/vectorize-batch-hybrid": {"items": ["hello"]},
    "/embed_sparse": {"inputs": "hello"},
    "/embed_all": {"inputs": ["hello"]},
    "/embed": {"inputs": ["hello", "world"], "normalize": False},
    "/": {"inputs": "hello"},  # POST /: the fake scores (every task), so TEI's root predicts; GET / ignores it
    "/predict": {"inputs": [["hello"], ["hello", "world"]]},
    "/similarity": {"inputs": {"source_sentence": "hello", "sentences": ["hello world"]}},
    "/tokenize": {"inputs": "hello"},
    "/decode": {"ids": [1, 5, 2]},
    "/v1/encodings": {"input": "hello"},
    "/rerank": {"query": "hello", "texts": ["hello world", "cat"]},
    "/v1/rerank": {"query": "hello", "documents": ["hello world", {"text": "cat"}]},
    "/v2/rerank": {"query": "hello", "documents": ["hello world", "cat"]},
    "/v2/embed": {"input_type": "search_query", "texts": ["hello"], "embedding_types": ["float", "int8"]},
    "/v1/embed": {"texts": ["hello"]},
    "/score": {"queries": "hello", "documents": ["hello world", "cat"]},
    "/v1/score": {"text_1": "hello", "text_2": "hello world"},
    "/fine-tune": {"text_content": "q\tp", "model_name": "walk-full"},
    "/fine-tune-lora": {"text_content": "q\tp", "model_name": "walk-lora"},
    "/v1/fine_tuning/jobs": {"model": "org/fake-model", "training_data": "q\tp", "suffix": "walk-ours"},
    "/v1/files": {"purpose": "fine-tune", "file": ("walk.tsv", b"q\tp\n")},  # a form: see `send`
    "/v1/models/org/fake-model:predict": {"instances": ["hello"]},  # KServe V1
    "/v2/models/org/fake-model/infer": {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]},
}
FORMS = {"/v1/files"}  # POSTed as a multipart form (a (filename, bytes) value is a file), not JSON
JOB = "walk-job"  # stands for a job's id in the paths; the authorised walk uses a real one
FILE = "walk-file"  # and a file's (a fresh one for each DELETE)
PARAMS = {"/model/load": {"model_name": "org/other"}, "/model/unload": {"model_name": "org/fake-model"}}


def served_routes(app) -> list:
    """Every route the app answers, however FastAPI nests included routers."""

    def flatten(routes):
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                yield from flatten(inner.routes)
            else:
                yield route

    return list(flatten(app.router.routes))


MODEL_PARAM = re.compile(r"\{model:\w+\}")  # {model:path}, and api/routing.py's model-name convertors


def calls(routes) -> list[tuple[str, str, object]]:
    return [
        (method, MODEL_PARAM.sub("org/fake-model", route.path).replace("{job_id}", JOB)
         .replace("{file_id}", FILE).replace("{asset}", "app.js"), route)
        for route in routes
        for method in sorted(route.methods)
        if method != "HEAD"
    ]


class CountingResolver(FakeResolver):
    def __init__(self):
        self.names: list[str] = []

    def resolve(self, name: str, **policy):
        self.names.append(name)
        return super().resolve(name, **policy)


@pytest.fixture
def walk(tmp_path):
    backend, resolver = FakeBackend(tasks=frozenset(Task)), CountingResolver()  # every route's task
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-embed embed\nsk-admin admin\n")
    settings = Settings(
        models=("org/fake-model",), api_keys=("sk-all",), api_key_file=keys, models_dir=tmp_path / "models",
        state_dir=tmp_path / "state", max_train_jobs=8,
    )
    app = create_app(settings, backend_factory=lambda path: backend, resolver=resolver,
                     training_command=fake_command("hang"))  # jobs wait, untrained, until the app stops
    with TestClient(app) as client:
        wait_ready(client)
        yield app, client, backend, resolver


def send(client, method, path, headers):
    if method == "POST" and path in FORMS:
        form = BODIES[path]
        files = {k: v for k, v in form.items() if isinstance(v, tuple)}
        data = {k: v for k, v in form.items() if k not in files}
        return client.request(method, path, data=data, files=files, params=PARAMS.get(path), headers=headers)
    body = None if path in FORMS else BODIES.get(path)  # GET /v1/files: no body
    return client.request(method, path, json=body, params=PARAMS.get(path), headers=headers)


def test_every_route_the_app_serves_declares_a_scope(walk):
    app, *_ = walk
    ours = [route for router in ROUTERS for route in router.routes]
    served = served_routes(app)
    assert {(r.path, frozenset(r.methods)) for r in served} == {(r.path, frozenset(r.methods)) for r in ours}
    assert len(served) >= 27  # the walk below covers what the app really serves (27 routes today)
    for route in served:
        assert route_scope(route) is not None, f"{route.path} declares no scope"
        assert (route_scope(route) in (Scope.OPEN, Scope.METRICS)) == (route.path in OPEN), route.path


def test_without_the_right_key_nothing_reaches_the_engine(walk, monkeypatch):
    app, client, backend, resolver = walk
    lane_calls = []
    real_payload = embeddings_lane.embeddings_payload
    monkeypatch.setattr(embeddings_lane, "embeddings_payload", lambda *a, **k: lane_calls.append(1) or real_payload(*a, **k))
    resolved_at_start = list(resolver.names)
    checked = 0
    for method, path, route in calls(served_routes(app)):
        scope = route_scope(route)
        if scope in (Scope.OPEN, Scope.METRICS):
            continue
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"X-Api-Key": "sk-embedx"}, {"Authorization": "sk-"}):
            r = send(client, method, path, headers)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            if route_errors(route) is ErrorShape.TEI:  # TEI's routes answer in TEI's error shape
                assert r.json()["error_type"] == "Validation" and r.headers["www-authenticate"] == "Bearer"
            elif route_errors(route) is ErrorShape.KSERVE:  # KServe's: {"error": "..."}
                assert isinstance(r.json()["error"], str) and r.headers["www-authenticate"] == "Bearer"
            else:
                assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
            checked += 1
        if scope is Scope.ADMIN:
            r = send(client, method, path, {"X-Api-Key": "sk-embed"})
            assert r.status_code == 403, (method, path, r.text)
        if scope is Scope.EMBED:
            r = send(client, method, path, {"X-Api-Key": "sk-admin"})
            assert r.status_code == 403, (method, path, r.text)
    assert checked >= 60
    assert backend.batch_sizes == [] and lane_calls == []  # no batch ran, the lane never embedded
    assert resolver.names == resolved_at_start  # and no model name was even looked up
    assert [m.id for m in app.state.service.pool.models] == ["org/fake-model"]


def test_with_the_right_key_every_route_answers_without_auth_errors(walk):
    """The other half of the walk: the bodies above are served, so the 401s were the key's doing."""
    app, client, backend, _ = walk
    job = client.post("/fine-tune", json={"text_content": "q\tp", "model_name": "walk-job"}, headers={"X-Api-Key": "sk-all"})

    def new_file() -> str:
        return send(client, "POST", "/v1/files", {"X-Api-Key": "sk-all"}).json()["id"]

    kept = new_file()
    for method, path, route in calls(served_routes(app)):
        if path == "/model/unload":
            continue  # would unload the model the other routes use; tests/unit/api covers it
        path = path.replace(JOB, job.json()["job_id"]).replace(FILE, new_file() if method == "DELETE" else kept)
        if path.endswith("/resume"):  # only an interrupted job resumes
            app.state.training.store.update(job.json()["job_id"], status="interrupted")
        r = send(client, method, path, {"Authorization": "Bearer sk-all"})
        assert r.status_code == 200, (method, path, r.status_code, r.text[:200])
    assert len(backend.batch_sizes) >= 6  # every embedding route (lane included) reached the engine


def test_the_lane_engages_behind_a_root_path(tmp_path, monkeypatch):
    backend = FakeBackend()
    settings = Settings(models=("org/fake-model",), api_keys=("sk-all",))
    app = create_app(settings, backend_factory=lambda path: backend, resolver=FakeResolver())
    lane_calls = []
    real_payload = embeddings_lane.embeddings_payload
    monkeypatch.setattr(embeddings_lane, "embeddings_payload", lambda *a, **k: lane_calls.append(1) or real_payload(*a, **k))
    with TestClient(app, root_path="/proxy") as client:
        wait_ready(client)
        r = client.post("/proxy/v1/embeddings", json={"input": "hi"})
        assert r.status_code == 401  # the route was found behind the prefix, and its scope applied
        r = client.post("/proxy/v1/embeddings", json={"input": "hi"}, headers={"X-Api-Key": "sk-all"})
        assert r.status_code == 200, r.text
    assert lane_calls == [1]  # served by the lane, not replayed to FastAPI

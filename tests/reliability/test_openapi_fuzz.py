"""Schemathesis over every operation of the app's own OpenAPI schema, open and with API keys.

For each operation of the schema the app serves at /openapi.json, schemathesis sends its
schema's examples, its coverage cases (boundary values, missing and wrong-typed fields,
methods the path doesn't take) and `MAX_EXAMPLES` generated requests, valid and invalid
alike, and checks every answer: no 5xx, a documented status, a documented content type and
headers, a body matching the documented schema (OpenAI's error shape for every error),
invalid data refused, and, with keys, that the operation refuses a missing or wrong key.

The app runs in-process on the fake backend, a fresh one for each operation. Names the
fuzzer makes up reach only `FuzzResolver`, which knows two names and answers 404 for every
other, so nothing here can reach the network. Generation is derandomised: CI sees the same
requests on every run, and a failure reproduces locally (schemathesis prints a curl line).

Not enabled: `positive_data_acceptance` (a request the schema allows must be accepted). The
server refuses (422/400), by design, inputs JSON Schema can't describe: token ids outside
the model's vocabulary, `input_type` with token ids, more `dimensions` than the model has,
`880.0` for a strict integer, unpaired surrogates. The stateful phase has no links to follow.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python import asgi

from embedserve.api.app import create_app
from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from embedserve.errors import ModelNotFound, shown
from embedserve.models.registry import ResolvedModel, aliases_for
from embedserve.settings import Settings
from tests.support.training import fake_command

MODEL = "org/fake-model"  # served from start-up
OTHER = "org/other-model"  # known to the resolver, loaded only on request
KEY = "sk-test"
# Generated requests per operation (fuzzing phase; examples and coverage cases come on top).
# For a deeper local run: FUZZ_EXAMPLES=1000 FUZZ_SEED=7 (a seed turns derandomisation off).
SCRATCH = tempfile.TemporaryDirectory(prefix="embedserve-fuzz-")  # every app's jobs and models
JOB = "the-latest-job"  # in SUCCESS: the id of the job created last (`with_job`)
FILE = "the-latest-file"  # in SUCCESS: the id of the file uploaded last (`with_job`)
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
SEED = os.environ.get("FUZZ_SEED")

# Every built-in response check schemathesis has for one request, except positive_data_acceptance
# (see the module docstring). The stateful ones (use_after_free, ...) need the stateful phase.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "allow_header_conformance",
)


class FuzzResolver:
    """Knows MODEL and OTHER; any other name is not found (404), as a real server's unknown
    name would be. Never the Hub resolver: no name the fuzzer makes up can reach the network."""

    def resolve(self, name: str, **policy) -> ResolvedModel:
        if name not in (MODEL, OTHER):
            raise ModelNotFound(f"model {shown(name)} could not be found", param="model")
        return ResolvedModel(name, Path("/fake") / name, "fake", aliases_for(name))


def make_app(keys: bool, **overrides):
    """Fine-tuning on, into a fresh folder per app, with the fake trainer in its `hang` mode: a job
    the fuzzer starts costs a waiting process (stopped with the app), never a training run."""
    state = Path(tempfile.mkdtemp(prefix="fuzz-", dir=SCRATCH.name))
    settings = Settings(
        models=(MODEL,), api_keys=(KEY,) if keys else (), models_dir=state / "models", state_dir=state / "state",
        max_train_jobs=4, **overrides,
    )
    return create_app(settings, backend_factory=lambda path: FakeBackend(tasks=frozenset(Task)), resolver=FuzzResolver(),
                      training_command=fake_command("hang"))


def fuzz_config(keys: bool) -> schemathesis.Config:
    data: dict[str, Any] = {
        "seed": int(SEED or 20240601),
        "generation": {
            "mode": "all",  # valid and invalid requests
            "max-examples": MAX_EXAMPLES,
            "deterministic": SEED is None,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    }
    if keys:  # both of the schema's security schemes, with the one key
        data["auth"] = {"openapi": {"bearer": {"bearer": KEY}, "apiKey": {"api_key": KEY}}}
    return schemathesis.Config.from_dict(data)


async def stray(scope, receive, send):
    """The schema's own app: every request goes to the `Served` app of its test instead (`run`
    passes it), so anything that reaches this one is a mistake, and fails its check loudly."""
    if scope["type"] != "http":
        raise RuntimeError("no lifespan")  # before receive(): "lifespan not supported"
    await send({"type": "http.response.start", "status": 599, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"sent to the schema's app, not the app under test"})


def load_schema(keys: bool, **overrides):
    """The schema the app serves at /openapi.json (`test_the_fuzzed_schema_is_the_served_one`)."""
    schema = schemathesis.openapi.from_dict(make_app(keys, **overrides).openapi(), config=fuzz_config(keys))
    schema.app = stray
    return schema


open_schema = load_schema(keys=False)
keyed_schema = load_schema(keys=True)
protected_metrics_schema = load_schema(keys=True, protect_metrics=True).include(path="/metrics")


class Counted:
    """The app, counting the status of every response it sends (schemathesis's probes included)."""

    def __init__(self, app):
        self.app = app
        self.statuses: Counter[int] = Counter()

    async def __call__(self, scope, receive, send):
        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.statuses[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send if scope["type"] == "http" else send)


@dataclass
class Served:
    keys: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    app: Counted | None = None
    client: asgi.ASGIClient | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def start(self) -> Served:
        self.app = Counted(make_app(self.keys, **self.overrides))
        self.headers = {"Authorization": f"Bearer {KEY}"} if self.keys else {}
        self.client = asgi.get_client(self.app)
        self.client.__enter__()  # starts the app's lifespan until `stop`; the model loads in the background
        deadline = time.monotonic() + 10
        while self.client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.01)
        self.app.statuses.clear()
        return self

    def keep_default_model(self) -> None:
        """After the fuzzer unloaded the default model, load it again, so the rest of the
        operation's requests meet a serving app rather than 503/404 only."""
        if self.app.app.state.service.pool.find(MODEL) is None:
            response = self.client.post("/model/load", params={"model_name": MODEL}, headers=self.headers)
            assert response.status_code == 200, response.text

    def stop(self, label: str) -> None:
        asgi.shutdown_lifespans()
        # Never skipped, never vacuous: the operation was really called.
        statuses = self.app.statuses
        assert sum(statuses.values()) > 0, f"{label}: no request was sent"
        assert all(status < 500 for status in statuses), (label, dict(statuses))  # probes' answers too
        REQUESTS[label] = statuses


REQUESTS: dict[str, Counter[int]] = {}


def _served(request, keys: bool, **overrides):
    served = Served(keys, overrides).start()
    yield served
    served.stop(request.node.name)


@pytest.fixture
def open_app(request):
    yield from _served(request, keys=False)


@pytest.fixture
def keyed_app(request):
    yield from _served(request, keys=True)


@pytest.fixture
def protected_metrics_app(request):
    yield from _served(request, keys=True, protect_metrics=True)


def run(case, served: Served) -> None:
    case.call_and_validate(app=served.app)
    if case.operation.path == "/model/unload":
        served.keep_default_model()


# The fixture is per operation (one app per operation, for all of its examples): deliberate.
FIXTURE_PER_OPERATION = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@open_schema.parametrize()
@FIXTURE_PER_OPERATION
def test_fuzz_every_operation_open_server(case, open_app):
    run(case, open_app)


@keyed_schema.parametrize()
@FIXTURE_PER_OPERATION
def test_fuzz_every_operation_with_api_keys(case, keyed_app):
    run(case, keyed_app)


@protected_metrics_schema.parametrize()
@FIXTURE_PER_OPERATION
def test_fuzz_metrics_with_protect_metrics(case, protected_metrics_app):
    run(case, protected_metrics_app)


# ---- one valid request per operation, so each success body is checked against its schema ----

SUCCESS = [  # (operation, request), in order: OTHER is loaded before it is unloaded
    ("POST /v1/embeddings", {"body": {"input": ["hello world", "again"], "model": MODEL}}),
    ("POST /v1/embeddings", {"body": {"input": [[5, 6, 7]], "encoding_format": "base64", "dimensions": 4}}),
    ("GET /v1/models", {}),
    ("GET /v1/models/{model}", {"path_parameters": {"model": MODEL}}),
    ("GET /health", {}),
    ("GET /ready", {}),
    ("GET /metrics", {}),
    ("POST /embedding", {"body": {"id1": "hello world", "id2": "again"}}),
    ("POST /embedding", {"body": {"instances": ["hello world"]}}),
    ("GET /", {}),
    ("POST /embeddings", {"body": {"texts": ["hello"], "model_name": MODEL, "normalize": False}}),
    ("POST /embeddings", {"body": {"input": ["hello"], "model": "default/not-specified", "dimensions": 0}}),
    ("GET /models", {}),
    ("GET /model/info", {}),
    ("POST /model/load", {"query": {"model_name": OTHER}}),
    ("POST /model/load", {"query": {"model_name": OTHER}}),  # already loaded
    ("POST /model/unload", {"query": {"model_name": OTHER}}),
    ("GET /v1/encode", {"body": {"model": "fake-model", "input": ["iPhone", "Samsung"]}}),
    ("POST /v1/encode", {"body": {"input": ["iPhone"]}}),
    ("POST /vectorize", {"body": {"text": "hello", "is_query": True}}),
    ("POST /vectorize-batch", {"body": {"items": ["a", "b"]}}),
    ("POST /vectorize-hybrid", {"body": {"text": "hello world", "return_colbert": True}}),
    ("POST /vectorize-batch-hybrid", {"body": {"items": ["a b", "c"]}}),
    ("POST /embed_sparse", {"body": {"inputs": ["hello world"], "truncate": True}}),
    ("POST /embed_all", {"body": {"inputs": "hello world"}}),
    ("POST /embed", {"body": {"inputs": ["hello world", "again"], "normalize": False}}),
    ("POST /embed", {"body": {"inputs": [[5, 6, 7]], "dimensions": 4}}),
    ("POST /", {"body": {"inputs": "hello world"}}),  # the fake scores (every task): TEI's root predicts
    ("POST /", {"body": {"query": "hello", "texts": ["hello world", "cat"]}}),  # ... or reranks
    ("POST /", {"body": {"inputs": {"source_sentence": "hello", "sentences": ["hello world"]}, "parameters": {}}}),
    ("POST /predict", {"body": {"inputs": [["hello"], ["hello", "world"]], "raw_scores": True}}),
    ("POST /similarity", {"body": {"inputs": {"source_sentence": "hello", "sentences": ["hello world", "cat"]}}}),
    ("POST /tokenize", {"body": {"inputs": ["hello world", "cat"], "add_special_tokens": False}}),
    ("POST /decode", {"body": {"ids": [[1, 5, 2], [7]], "skip_special_tokens": False}}),
    ("GET /info", {}),
    ("POST /v1/encodings", {"body": {"input": ["hello world"], "encoding_format": "base64", "sparse": {"top_k": 2, "return_tokens": True}}}),
    ("POST /v1/encodings", {"body": {"input": "hello", "outputs": ["sparse"], "sparse": {"min_weight": 0.2}}}),
    ("POST /rerank", {"body": {"query": "hello", "texts": ["hello world", "cat"], "return_text": True}}),
    ("POST /rerank", {"body": {"query": "hello", "documents": ["hello world", "cat"], "top_n": 1}}),
    ("POST /rerank", {"body": {"query": "hello", "candidates": ["hello world", "cat"]}}),
    ("POST /v1/rerank", {"body": {"query": "hello", "documents": ["hello world", {"text": "cat"}], "top_n": 1}}),
    ("POST /v2/rerank", {"body": {"query": "hello", "documents": ["hello world", "cat"], "max_tokens_per_doc": 64}}),
    ("POST /v2/embed", {"body": {"input_type": "search_query", "texts": ["hello world"], "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"]}}),
    ("POST /v1/embed", {"body": {"texts": ["hello world", "cat"]}}),
    ("POST /v1/embed", {"body": {"texts": ["hello world"], "embedding_types": ["int8"]}}),
    ("POST /score", {"body": {"queries": "hello", "documents": ["hello world", "cat"]}}),
    ("POST /v1/score", {"body": {"text_1": ["hello", "cat"], "text_2": ["hello world", "dog"]}}),
    ("POST /fine-tune", {"body": {"text_content": "q\tp\nq2\tp2", "model_name": "tuned-full"}}),
    ("GET /train-status/{job_id}", {"path_parameters": {"job_id": JOB}}),
    ("POST /fine-tune-lora", {"body": {"text_content": "q\tp", "model_name": "tuned-lora", "r": 8, "use_qlora": True}}),
    ("POST /v1/fine_tuning/jobs", {"body": {"model": MODEL, "training_data": [{"anchor": "q", "positive": "p"}], "method": "lora", "hyperparameters": {"n_epochs": 2}, "suffix": "tuned-ours"}}),
    ("GET /v1/fine_tuning/jobs", {"query": {"limit": 2}}),
    ("GET /v1/fine_tuning/jobs/{job_id}", {"path_parameters": {"job_id": JOB}}),
    ("GET /v1/fine_tuning/jobs/{job_id}/events", {"path_parameters": {"job_id": JOB}}),
    ("POST /v1/fine_tuning/jobs/{job_id}/cancel", {"path_parameters": {"job_id": JOB}}),
    ("POST /v1/fine_tuning/jobs/{job_id}/resume", {"path_parameters": {"job_id": JOB}}),
    ("POST /v1/files", {"body": {"file": b"q\tp\nq2\tp2\n", "purpose": "fine-tune"}}),
    ("GET /v1/files", {"query": {"limit": 2, "purpose": "fine-tune"}}),
    ("GET /v1/files/{file_id}", {"path_parameters": {"file_id": FILE}}),
    ("POST /v1/fine_tuning/jobs", {"body": {"model": MODEL, "training_file": FILE, "suffix": "tuned-from-file"}}),
    ("DELETE /v1/files/{file_id}", {"path_parameters": {"file_id": FILE}}),
    # KServe V1 and the Open Inference Protocol V2 (api/kserve.py)
    ("POST /v1/models/{model}:predict", {"path_parameters": {"model": MODEL}, "body": {"instances": ["hello", "world"]}}),
    ("POST /v1/models/{model}:predict", {"path_parameters": {"model": "fake-model"}, "body": {"instances": [[5, 6, 7]]}}),
    ("GET /v2/health/live", {}),
    ("GET /v2/health/ready", {}),
    ("GET /v2", {}),
    ("GET /v2/models/{model}", {"path_parameters": {"model": MODEL}}),
    ("GET /v2/models/{model}/ready", {"path_parameters": {"model": MODEL}}),
    ("POST /v2/models/{model}/infer", {"path_parameters": {"model": MODEL}, "body": {"id": "42", "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["a b"], ["c"]]}]}}),
    ("POST /v2/models/{model}/infer", {"path_parameters": {"model": MODEL}, "body": {"inputs": [{"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [5, 6, 7, 8]}], "outputs": [{"name": "output-0"}]}}),
]


def with_job(served: Served, label: str, parts: dict) -> dict:
    """`parts` with JOB replaced by the latest job's id (interrupted first, for /resume), FILE by
    the latest file's."""
    if FILE in (parts.get("path_parameters", {}).get("file_id"), parts.get("body", {}).get("training_file")):
        file_id = served.app.app.state.training.files.list(limit=1)[0].id
        if "body" in parts:
            return {**parts, "body": {**parts["body"], "training_file": file_id}}
        return {**parts, "path_parameters": {"file_id": file_id}}
    if parts.get("path_parameters", {}).get("job_id") != JOB:
        return parts
    training = served.app.app.state.training
    job_id = training.list(limit=1)[0].id
    if label.endswith("/resume"):
        training.store.update(job_id, status="interrupted")
    return {**parts, "path_parameters": {"job_id": job_id}}


def operations(schema) -> dict[str, Any]:
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[operation.label] = operation
    return found


@pytest.mark.parametrize("keys", [False, True], ids=["open", "keyed"])
def test_a_valid_request_to_every_operation_succeeds_as_documented(keys):
    schema = keyed_schema if keys else open_schema
    by_label = operations(schema)
    assert {label for label, _ in SUCCESS} == set(by_label), "add the new operation to SUCCESS"
    served = Served(keys).start()
    try:
        for label, parts in SUCCESS:
            parts = with_job(served, label, parts)
            case = by_label[label].Case(headers=dict(served.headers), **parts)
            response = case.call_and_validate(app=served.app)
            assert 200 <= response.status_code < 300, (label, response.status_code, response.text)
    finally:
        served.stop(f"{'keyed' if keys else 'open'} success")


def test_the_fuzzed_schema_is_the_served_one():
    for keys, schema in ((False, open_schema), (True, keyed_schema)):
        served = Served(keys).start()
        try:
            response = served.client.get("/openapi.json", headers=served.headers)
            assert response.status_code == 200
            assert response.json() == schema.raw_schema
        finally:
            served.stop(f"{'keyed' if keys else 'open'} openapi.json")


# ---- the schema documents every error an operation can answer -------------------------------

# What each operation can answer beyond what its shape implies (401/403 for a guarded one;
# 408/413/422 for one with a body; 422 for one with parameters). From the code: 404 for a model
# name that isn't served, 503 while no model can answer, 429 for a full queue, 500 for a failed
# inference batch, 400 for `dimensions`, 424/504/507 for loading a model by name.
EMBEDS = {413, 422, 429, 500, 503}
CAN_ANSWER: dict[str, set[int]] = {
    "POST /v1/embeddings": EMBEDS | {400, 404, 424, 504, 507},
    "GET /v1/models": set(),
    "GET /v1/models/{model}": {404, 503},
    "GET /health": set(),
    "GET /ready": {503},
    "GET /metrics": set(),
    "POST /embedding": EMBEDS | {400},  # the Flask server's 400s: an empty map, empty instances
    "GET /": set(),
    "POST /embeddings": EMBEDS | {400, 404, 424, 504, 507},
    "GET /models": set(),
    "GET /model/info": {503},
    "POST /model/load": {404, 422, 424, 503, 504, 507},
    "POST /model/unload": {404, 422},
    "GET /v1/encode": EMBEDS | {400},  # a model it has not loaded: 400, as that server answered
    "POST /v1/encode": EMBEDS | {400},
    "POST /vectorize": EMBEDS,
    "POST /vectorize-batch": EMBEDS,
    # a model without the outputs a route needs: 400 naming its tasks
    "POST /vectorize-hybrid": EMBEDS | {400},
    "POST /vectorize-batch-hybrid": EMBEDS | {400},
    "POST /embed_sparse": EMBEDS | {400, 404, 424, 504, 507},
    "POST /embed_all": EMBEDS | {400, 404, 424, 504, 507},
    "POST /embed": EMBEDS | {400, 404, 424, 504, 507},
    "POST /": EMBEDS | {400, 404, 424, 504, 507},
    "POST /predict": EMBEDS | {400, 404, 424, 504, 507},
    "POST /similarity": EMBEDS | {400, 404, 424, 504, 507},
    "POST /tokenize": {404, 413, 422, 424, 503, 504, 507},
    "POST /decode": {404, 413, 422, 424, 503, 504, 507},
    "GET /info": {503},
    "POST /v1/encodings": EMBEDS | {400, 404, 424, 504, 507},
    "POST /rerank": EMBEDS | {400, 404, 424, 504, 507},
    "POST /v1/rerank": EMBEDS | {400, 404, 424, 504, 507},
    "POST /v2/rerank": EMBEDS | {400, 404, 424, 504, 507},
    "POST /v2/embed": EMBEDS | {400, 404, 424, 504, 507},
    "POST /v1/embed": EMBEDS | {400, 404, 424, 504, 507},
    "POST /score": EMBEDS | {400, 404, 424, 504, 507},
    "POST /v1/score": EMBEDS | {400, 404, 424, 504, 507},
    # fine-tuning: no --models-dir or a base without embed (400), unknown base or job (404), a name
    # taken or a finished job (409), no valid pairs or a bad name (422), the job cap (429),
    # resolving the base (424/504), not started (503)
    "POST /fine-tune": {400, 404, 409, 422, 424, 429, 503, 504},
    "POST /fine-tune-lora": {400, 404, 409, 422, 424, 429, 503, 504},
    "GET /train-status/{job_id}": {400, 404, 503},
    "POST /v1/fine_tuning/jobs": {400, 404, 409, 422, 424, 429, 503, 504},
    "GET /v1/fine_tuning/jobs": {400, 503},
    "GET /v1/fine_tuning/jobs/{job_id}": {400, 404, 503},
    "GET /v1/fine_tuning/jobs/{job_id}/events": {400, 404, 503},
    "POST /v1/fine_tuning/jobs/{job_id}/cancel": {400, 404, 409, 503},
    "POST /v1/fine_tuning/jobs/{job_id}/resume": {400, 404, 409, 429, 503},
    # uploaded training files: no --models-dir (400), unknown id (404), over --max-file-bytes (413),
    # not a fine-tune file of pairs (422), not started (503)
    "POST /v1/files": {400, 413, 422, 503},
    "GET /v1/files": {400, 503},
    "GET /v1/files/{file_id}": {400, 404, 503},
    "DELETE /v1/files/{file_id}": {400, 404, 503},
    # KServe (api/kserve.py): embedding as POST /v1/embeddings does; a model's status as GET /v1/models/{model}
    "POST /v1/models/{model}:predict": EMBEDS | {400, 404, 424, 504, 507},
    "GET /v2/health/live": set(),
    "GET /v2/health/ready": {503},
    "GET /v2": set(),
    "GET /v2/models/{model}": {404, 503},
    "GET /v2/models/{model}/ready": {404, 503},
    "POST /v2/models/{model}/infer": EMBEDS | {400, 404, 424, 504, 507},
}
ERROR_REF = "#/components/schemas/ErrorResponse"
TEI_ERROR_REF = "#/components/schemas/TeiErrorResponse"
DROP_IN_ERROR_REF = "#/components/schemas/DropInErrorResponse"
KSERVE_ERROR_REF = "#/components/schemas/KServeErrorResponse"
ERROR_REFS = {
    "openai": [ERROR_REF], "tei": [TEI_ERROR_REF], "either": [ERROR_REF, TEI_ERROR_REF], "drop_in": [DROP_IN_ERROR_REF],
    "kserve": [KSERVE_ERROR_REF],
}  # x-embedserve-errors


def walk(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


@pytest.mark.parametrize(
    "keys, protect_metrics", [(False, False), (True, False), (True, True)], ids=["open", "keyed", "keyed-metrics"]
)
def test_every_operation_documents_the_errors_it_can_answer(keys, protect_metrics):
    schema = make_app(keys, protect_metrics=protect_metrics).openapi()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    assert components["ErrorResponse"]["required"] == ["error"]
    assert set(components["ErrorDetail"]["required"]) == {"message", "type", "param", "code"}
    assert ("securitySchemes" in schema.get("components", {})) == keys
    labels = set()
    for label, operation in walk(schema):
        labels.add(label)
        documented = {int(status) for status in operation["responses"]}
        scopes = {"embed", "admin"} | ({"metrics"} if protect_metrics else set())
        guarded = keys and operation["x-embedserve-scope"] in scopes
        assert bool(operation.get("security")) == guarded, label
        needed = set(CAN_ANSWER[label])
        if guarded:
            needed |= {401, 403}
        if "requestBody" in operation:
            needed |= {408, 413, 422}
        if operation.get("parameters"):
            needed |= {422}
        assert needed <= documented, (label, sorted(needed - documented))
        if not guarded:
            assert not {401, 403} & documented, label
        for status, response in operation["responses"].items():
            if int(status) >= 400:  # the route's error shape (OpenAI's unless TEI's), never FastAPI's 422 body
                schema = response["content"]["application/json"]["schema"]
                refs = [option["$ref"] for option in schema.get("anyOf", [schema])]
                assert refs == ERROR_REFS[operation.get("x-embedserve-errors", "openai")], (label, status)
            else:
                assert response.get("content"), (label, status)  # a documented success body
    assert labels == set(CAN_ANSWER), "add the new operation to CAN_ANSWER"

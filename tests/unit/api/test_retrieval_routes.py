"""The routes for sparse and multi-vector outputs, on the fake backend: shapes, options, refusals."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task

ALL = frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR})
ROUTES = [  # every route that needs more than a dense vector, with a body it would serve
    ("/vectorize-hybrid", {"text": "hello world", "return_colbert": True}),
    ("/vectorize-batch-hybrid", {"items": ["hello world"]}),
    ("/embed_sparse", {"inputs": "hello world"}),
    ("/embed_all", {"inputs": ["hello world"]}),
    ("/v1/encodings", {"input": "hello world", "outputs": ["sparse"]}),
]


@pytest.fixture
def hybrid(make_client):
    backend = FakeBackend(tasks=ALL, prompts={"query": "q: ", "short": "s "})
    return make_client(backend=backend), backend


@pytest.mark.parametrize("path, body", ROUTES, ids=[p for p, _ in ROUTES])
def test_a_dense_only_model_gets_400_naming_its_tasks(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 400
    if path.startswith("/embed_"):  # TEI's routes answer in TEI's error shape (tests/unit/api/test_tei.py)
        answer = r.json()
        assert set(answer) == {"error", "error_type"} and answer["error_type"] == "Validation"
        assert answer["error"].startswith("model 'org/fake-model' does not do ") and answer["error"].endswith("its tasks are embed")
        return
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("model_task_unsupported", "model", "invalid_request_error")
    assert error["message"].startswith("model 'org/fake-model' does not do ") and error["message"].endswith("its tasks are embed")


def test_the_route_table_declares_each_routes_tasks(client):
    from embedserve.api.routing import route_tasks

    tasks = {route.path: route_tasks(route) for route in client.app.state.routes.routes}
    assert tasks["/v1/embeddings"] == ["embed"] and tasks["/embed_sparse"] == ["sparse"]
    assert tasks["/embed_all"] == ["multivector"] and set(tasks["/vectorize-hybrid"]) == {"embed", "sparse", "multivector"}
    assert tasks["/health"] == []


def test_hybrid_shapes_and_colbert_only_when_asked(hybrid):
    client, backend = hybrid
    one = client.post("/vectorize-hybrid", json={"text": "hello world again"}).json()["hybrid_vector"]
    assert set(one) == {"dense", "sparse", "colbert"} and one["colbert"] is None
    ids = backend.tokenize(["hello world again"], truncate=True)[0]
    expected = backend.sparse_for(ids)
    assert one["sparse"] == {str(i): pytest.approx(w) for i, w in zip(expected.indices.tolist(), expected.values.tolist())}
    batch = client.post("/vectorize-batch-hybrid", json={"items": ["a b", "c"], "return_colbert": True}).json()
    assert [len(v["colbert"]) for v in batch["hybrid_vectors"]] == [3, 2]  # tokens after CLS: words + SEP


def test_encodings_base64_and_sparse_options(hybrid):
    client, backend = hybrid
    body = {"input": ["w1 w2 w3 w4 w5"], "encoding_format": "base64", "sparse": {"top_k": 2, "return_tokens": True}}
    r = client.post("/v1/encodings", json=body)
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    dense = np.frombuffer(base64.b64decode(item["dense"]), dtype="<f4")
    assert dense.shape == (8,) and abs(np.linalg.norm(dense) - 1) < 1e-6
    shape = item["multivector"]["shape"]
    vectors = np.frombuffer(base64.b64decode(item["multivector"]["data"]), dtype="<f4").reshape(shape)
    ids = backend.tokenize(["w1 w2 w3 w4 w5"], truncate=True)[0]
    assert np.allclose(vectors, backend.multivector_for(ids))
    sparse = item["sparse"]
    assert len(sparse["indices"]) == 2 and sparse["indices"] == sorted(sparse["indices"])
    assert sparse["tokens"] == [f"t{i}" for i in sparse["indices"]]
    assert r.json()["usage"]["prompt_tokens"] == len(ids)


def test_encodings_gives_only_the_outputs_asked(hybrid):
    client, _ = hybrid
    item = client.post("/v1/encodings", json={"input": "a b", "outputs": ["multivector"]}).json()["data"][0]
    assert set(item) == {"object", "index", "multivector"}
    r = client.post("/v1/encodings", json={"input": "a b", "outputs": ["dense", "dense"]})
    assert r.status_code == 422 and "twice" in r.json()["error"]["message"]


def test_tei_prompt_name_and_truncation_direction(hybrid):
    client, backend = hybrid
    plain = client.post("/embed_all", json={"inputs": "hello"}).json()[0]
    prompted = client.post("/embed_all", json={"inputs": "hello", "prompt_name": "short"}).json()[0]
    assert len(prompted) == len(plain) + 1  # "s " put before the text: one more token
    assert np.allclose(prompted, backend.multivector_for(backend.tokenize(["s hello"], truncate=True)[0]))
    r = client.post("/embed_sparse", json={"inputs": "hello", "prompt_name": "nope"})
    assert r.status_code == 422 and "no prompt named 'nope' (its prompts: query, short)" in r.json()["error"]
    r = client.post("/embed_all", json={"inputs": "hello", "truncation_direction": "Left"})
    assert r.status_code == 422 and "only 'Right' truncation" in r.json()["error"]


def test_input_errors_name_the_callers_field(hybrid):
    client, _ = hybrid
    raw = b'{"items": ["ok", "\\ud800"]}'  # valid JSON, not text
    r = client.post("/vectorize-batch-hybrid", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "items[1]"
    r = client.post("/embed_sparse", json={"inputs": ["ok", " ".join(["w"] * 40)], "truncate": False})
    assert r.status_code == 422 and r.json()["error"].startswith("inputs[1] has at least")  # TEI's shape: no param

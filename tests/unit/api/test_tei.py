"""TEI's embedding routes (/embed, /similarity), its root route and its error shape, on the fake backend."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from tests.support.api import assert_tei_error as tei_error
from tests.support.api import expected, expected_for_ids, raw_vector


def test_embed_a_string_gives_a_list_of_one_vector(client, fake_backend):
    r = client.post("/embed", json={"inputs": "hello world"})
    assert r.status_code == 200, r.text
    (vector,) = r.json()
    assert np.allclose(vector, expected(fake_backend, "hello world"), atol=1e-6)


def test_embed_normalizes_by_default_and_false_gives_the_raw_pooled_vectors(client, fake_backend):
    texts = ["a b", "c"]
    normalised = np.array(client.post("/embed", json={"inputs": texts}).json())
    raw = np.array(client.post("/embed", json={"inputs": texts, "normalize": False, "truncate": True}).json())
    for i, text in enumerate(texts):
        assert np.allclose(normalised[i], expected(fake_backend, text), atol=1e-6)
        assert np.allclose(raw[i], raw_vector(fake_backend, text), atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1)


def test_embed_token_ids_dimensions_and_prompts(make_client):
    backend = FakeBackend(prompts={"query": "q: "})
    client = make_client(backend=backend)
    one = client.post("/embed", json={"inputs": [5, 6, 7]}).json()
    assert len(one) == 1 and np.allclose(one[0], expected_for_ids(backend, [1, 5, 6, 7, 2]), atol=1e-6)
    cut = client.post("/embed", json={"inputs": [[5, 6], [7]], "dimensions": 4}).json()
    assert np.allclose(cut[1], expected_for_ids(backend, [1, 7, 2], dims=4), atol=1e-6)
    prompted = client.post("/embed", json={"inputs": "hello", "prompt_name": "query"}).json()
    assert np.allclose(prompted[0], expected(backend, "q: hello"), atol=1e-6)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"inputs": []}, 422, "'inputs' must not be empty"),
        ({"inputs": ["ok", ""]}, 422, "'inputs'"),
        ({"inputs": ["a", [1]]}, 422, "not mixed"),
        ({"inputs": 5}, 422, "'inputs'"),
        ({"inputs": [5], "prompt_name": "query"}, 422, "token ids"),
        ({"inputs": "a", "prompt_name": "nope"}, 422, "no prompt named 'nope'"),
        ({"inputs": "a", "truncation_direction": "Left"}, 422, "Right"),
        ({"inputs": "a", "dimensions": 99}, 400, "dimensions"),
        ({"inputs": "a", "normalize": "yes"}, 422, "normalize"),
        ({"inputs": "a", "model": "missing-model"}, 404, "missing-model"),
        ({}, 422, "'inputs' is required"),
    ],
)
def test_embed_refusals_have_tei_error_shape(client, body, status, words):
    assert words in tei_error(client.post("/embed", json=body), status)


def test_malformed_json_and_wrong_method_have_tei_error_shape(client):
    r = client.post("/embed", content=b"{not json", headers={"Content-Type": "application/json"})
    assert "not valid JSON" in tei_error(r, 422)
    tei_error(client.get("/embed"), 405)


def test_a_model_without_dense_vectors_gets_400_naming_its_tasks(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.SPARSE})))
    message = tei_error(client.post("/embed", json={"inputs": "a"}), 400)
    assert message == "model 'org/fake-model' does not do dense embeddings: its tasks are sparse"


def test_similarity_is_the_cosine_of_the_source_with_each_sentence(client, fake_backend):
    body = {"inputs": {"source_sentence": "a b", "sentences": ["a b", "c", "d e f"]}, "parameters": {"truncate": True}}
    r = client.post("/similarity", json=body)
    assert r.status_code == 200, r.text
    source = expected(fake_backend, "a b")
    assert r.json()[0] == 1.0
    assert np.allclose(r.json(), [source @ expected(fake_backend, s) for s in ["a b", "c", "d e f"]], atol=1e-6)
    assert fake_backend.batch_sizes[-1] == 4  # the source and the sentences: one request, one batch


def test_similarity_refusals_name_the_field(client):
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}})
    assert "inputs.sentences" in tei_error(r, 422)
    body = b'{"inputs": {"source_sentence": "a", "sentences": ["b", "\\ud800"]}}'  # valid JSON, not text
    r = client.post("/similarity", content=body, headers={"Content-Type": "application/json"})
    assert "'inputs.sentences[1]'" in tei_error(r, 422)


def test_similarity_counts_the_source_against_max_inputs(make_client):
    client = make_client(max_inputs=2)
    r = client.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": ["b", "c"]}})
    assert "at most 2" in tei_error(r, 422)


@pytest.mark.parametrize(
    "tasks, labels, body, answer",
    [
        ({Task.EMBED}, (), {"inputs": ["a b"], "truncate": True, "normalize": False}, "embed"),
        ({Task.EMBED}, (), {"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {}}, "similarity"),
        ({Task.SPARSE}, (), {"inputs": "a b"}, "sparse"),
        ({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR}, (), {"inputs": "a b", "normalize": False}, "embed"),
        ({Task.SCORE}, (), {"query": "a", "texts": ["b", "c"]}, "rerank"),
        ({Task.SCORE}, (), {"inputs": ["a", "b"]}, "predict"),
        ({Task.SCORE}, ("x", "y"), {"inputs": "a b"}, "predict"),
    ],
)
def test_the_root_route_answers_by_what_the_model_does(make_client, tasks, labels, body, answer):
    backend = FakeBackend(tasks=frozenset(tasks), labels=labels)
    client = make_client(backend=backend)
    r = client.post("/", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    if answer == "embed":
        assert np.allclose(got[0], raw_vector(backend, "a b"), atol=1e-6)  # normalize: false honoured
    elif answer == "similarity":
        assert isinstance(got, list) and isinstance(got[0], float)
    elif answer == "sparse":
        assert got == client.post("/embed_sparse", json=body).json()
    elif answer == "rerank":
        assert {rank["index"] for rank in got} == {0, 1} and set(got[0]) == {"index", "score"}
    else:
        assert {item["label"] for item in got} == set(labels or ("LABEL_0",))


def test_the_root_route_refuses_in_tei_shape(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.MULTIVECTOR})))
    assert "does not do dense embeddings" in tei_error(client.post("/", json={"inputs": "a"}), 400)
    assert "'inputs'" in tei_error(client.post("/", json={"texts": ["a"]}), 422)
    tei_error(client.post("/", json=["a"]), 422)
    assert client.get("/").status_code == 200  # GET / stays the API information


def test_rerank_answers_tei_errors_only_to_tei_bodies(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.SPARSE})))
    r = client.post("/rerank", json={"query": "a", "texts": ["b"]})
    assert "does not do scoring" in tei_error(r, 400)
    r = client.post("/rerank", json={"query": "a", "texts": [1]})
    assert "'texts[0]'" in tei_error(r, 422)
    r = client.post("/rerank", json={"query": "a", "documents": []})
    assert r.status_code == 422 and r.json()["error"]["param"] == "documents"  # Infinity's body: OpenAI's shape


def test_middleware_answers_tei_routes_in_tei_shape(make_client):
    client = make_client(api_keys=("sk-1",), max_body_bytes=64)
    r = client.post("/embed", json={"inputs": "a"})
    assert "No API key" in tei_error(r, 401) and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/embed", json={"inputs": "a" * 100}, headers={"X-Api-Key": "sk-1"})
    assert "larger than the limit" in tei_error(r, 413)
    r = client.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # OpenAI's routes keep theirs


def test_a_full_queue_is_overloaded_and_a_fault_is_backend(make_client, monkeypatch):
    from embedserve.errors import Overloaded

    backend = FakeBackend()
    client = make_client(backend=backend)
    service = client.app.state.service
    monkeypatch.setattr(service, "all_queues_full", lambda: Overloaded("queue full"))
    r = client.post("/embed", json={"inputs": "a"})
    assert tei_error(r, 429, "Overloaded") == "queue full" and r.headers["retry-after"] == "1"
    monkeypatch.undo()
    backend.fail_when = lambda batch: True
    tei_error(client.post("/embed", json={"inputs": "a"}), 500, "Backend")


def test_the_schema_documents_tei_errors_on_tei_routes(client):
    schema = client.get("/openapi.json").json()
    tei = {"$ref": "#/components/schemas/TeiErrorResponse"}
    for path, method in [("/embed", "post"), ("/", "post"), ("/predict", "post"), ("/info", "get"), ("/embed_sparse", "post")]:
        operation = schema["paths"][path][method]
        assert operation["x-embedserve-errors"] == "tei"
        assert operation["responses"]["422" if method == "post" else "503"]["content"]["application/json"]["schema"] == tei
    assert schema["paths"]["/"]["get"]["x-embedserve-errors"] == "drop_in"  # GET / is the Embeddings Generator's
    assert schema["components"]["schemas"]["TeiErrorResponse"]["required"] == ["error", "error_type"]

"""What Infinity's and other OpenAI-compatible clients send by default, on the fake backend:
OpenAI bodies at /embeddings, `dimensions: 0`, `GET /models`, and placeholder model names."""

from __future__ import annotations

import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from embedserve.settings import Settings


def test_an_openai_body_at_embeddings_gets_openais_answer_with_infinitys_id(client):
    body = {"input": ["hello", "world"], "model": "default/not-specified", "encoding_format": "float",
            "dimensions": 0, "modality": "text"}
    r = client.post("/embeddings", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["object"] == "list" and got["model"] == "default/not-specified"
    assert got["id"].startswith("infinity-") and isinstance(got["created"], int)
    plain = client.post("/v1/embeddings", json={"input": ["hello", "world"]}).json()
    assert [d["embedding"] for d in got["data"]] == [d["embedding"] for d in plain["data"]]
    assert got["usage"] == plain["usage"]


def test_the_generator_body_keeps_its_own_answer(client):
    r = client.post("/embeddings", json={"texts": ["hello"]})
    assert r.status_code == 200 and set(r.json()) == {"embeddings", "model_name", "dimensions", "processing_time", "total_texts"}


def test_both_shapes_at_once_are_refused(client):
    r = client.post("/embeddings", json={"texts": ["a"], "input": "a"})
    assert r.status_code == 422 and "not both" in r.json()["error"]["message"]


def test_another_modality_is_refused(client):
    r = client.post("/embeddings", json={"input": "https://example.com/cat.png", "modality": "image"})
    assert r.status_code == 422 and "modality" in r.json()["error"]["message"]


def test_dimensions_zero_means_the_whole_vector(client):
    whole = client.post("/v1/embeddings", json={"input": "hello"}).json()["data"][0]["embedding"]
    zero = client.post("/v1/embeddings", json={"input": "hello", "dimensions": 0}).json()["data"][0]["embedding"]
    assert zero == whole


def test_models_lists_in_infinitys_shape(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.EMBED})))
    r = client.get("/models")
    assert r.status_code == 200
    (entry,) = r.json()["data"]
    assert entry["id"] == "org/fake-model" and entry["object"] == "model"
    assert entry["capabilities"] == ["embed", "rerank"] and entry["tasks"] == ["embed"]
    assert set(entry["stats"]) == {"queue_fraction", "queue_absolute"}
    assert "owned_by" not in entry  # Infinity's client accepts only its own name there


@pytest.mark.parametrize("name", ["text-embedding-ada-002", "TEXT-EMBEDDING-3-SMALL", "default/not-specified"])
def test_openai_and_placeholder_names_reach_the_default_model(client, name):
    r = client.post("/v1/embeddings", json={"input": "hello", "model": name})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == name  # answered under the name asked for, as OpenAI does
    plain = client.post("/v1/embeddings", json={"input": "hello"}).json()
    assert r.json()["data"] == plain["data"]


def test_a_model_alias_maps_a_name_and_an_empty_target_removes_one(make_client):
    client = make_client(model_aliases=("my-embedder=default", "text-embedding-ada-002="), load_on_demand=False)
    assert client.post("/v1/embeddings", json={"input": "hi", "model": "my-embedder"}).status_code == 200
    r = client.post("/v1/embeddings", json={"input": "hi", "model": "text-embedding-ada-002"})
    assert r.status_code == 404 and "not loaded" in r.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": "hi", "model": "text-embedding-3-large"}).status_code == 200


def test_a_loaded_model_keeps_its_own_name_over_an_alias(make_client):
    client = make_client(models=("org/fake-model", "text-embedding-3-small"))
    assert client.get("/v1/models/text-embedding-3-small").json()["id"] == "text-embedding-3-small"
    assert client.get("/v1/models/text-embedding-3-large").json()["id"] == "org/fake-model"


@pytest.mark.parametrize("bad", ["no-equals", "=target", " =x"])
def test_a_malformed_alias_stops_start_up(bad):
    with pytest.raises(ValueError, match="NAME=MODEL"):
        Settings(model_aliases=(bad,))

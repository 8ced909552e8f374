"""vLLM's POST /score on the fake backend: every pairing of keys, 1:N and zipped pairs, in input order."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task


def _expected(backend: FakeBackend, pairs: list[tuple[str, str]]) -> list[float]:
    ids, _ = backend.tokenize_pairs(pairs, truncate=True)
    return [float(1 / (1 + np.exp(-np.float32(backend.score_for(p))))) for p in ids]


@pytest.mark.parametrize("left, right", [("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2")])
def test_one_query_against_many_in_every_pairing(make_client, left, right):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    docs = ["the fox", "a cat sat", "red car"]
    r = client.post("/score", json={left: "quick fox", right: docs})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["id"].startswith("score-") and body["model"]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "score" for d in body["data"])
    expected = _expected(backend, [("quick fox", d) for d in docs])
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-6)
    assert body["usage"]["prompt_tokens"] > 0


def test_zipped_pairs_keep_their_order_and_share_a_batch(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    left = ["quick fox", "blue sky", "quick fox"]
    right = ["the fox", "clouds", "red car"]
    r = client.post("/v1/score", json={"text_1": left, "text_2": right})
    assert r.status_code == 200, r.text
    expected = _expected(backend, list(zip(left, right)))
    assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected, abs=1e-6)


def test_two_strings_are_one_pair_and_raw_scores_skip_the_sigmoid(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    r = client.post("/score", json={"text_1": "quick fox", "text_2": "the fox", "use_activation": False})
    ids, _ = backend.tokenize_pairs([("quick fox", "the fox")], truncate=True)
    assert [d["score"] for d in r.json()["data"]] == pytest.approx([backend.score_for(ids[0])], abs=1e-6)


def test_a_dense_model_scores_by_cosine(make_client):
    backend = FakeBackend()
    client = make_client(backend=backend)
    r = client.post("/score", json={"queries": "hello", "documents": ["hello", "something else"]})
    assert r.status_code == 200, r.text
    q = client.post("/v1/embeddings", json={"input": ["hello", "something else"]}).json()["data"]
    a, b = (np.array(item["embedding"]) for item in q)
    assert [d["score"] for d in r.json()["data"]] == pytest.approx([1.0, float(a @ b)], abs=1e-5)


@pytest.mark.parametrize("body, says", [
    ({"queries": "q"}, "exactly one of"),
    ({"queries": "q", "documents": ["a"], "text_2": ["b"]}, "'text_2' does not belong"),
    ({"text_1": ["a", "b"], "text_2": ["c"]}, "the same count"),
    ({"text_1": ["a", "b"], "text_2": "c"}, "must be a list"),
    ({"queries": "q", "documents": []}, "documents"),
    ({"queries": "q", "documents": [""]}, "documents"),
    ({"queries": "q", "documents": [3]}, "documents"),
    ({"queries": "", "documents": ["a"]}, "'queries' is empty"),
    ({"queries": "q", "documents": ["a"], "raw_scores": "yes"}, "raw_scores"),
])
def test_bad_bodies_are_refused_before_any_work(make_client, body, says):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    r = client.post("/score", json=body)
    assert r.status_code in (400, 422), r.text
    assert says in r.json()["error"]["message"], r.json()
    assert backend.batches == []


def test_a_model_that_cannot_score_is_told_its_tasks(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SPARSE}))
    client = make_client(backend=backend)
    r = client.post("/score", json={"queries": "q", "documents": ["a"]})
    assert r.status_code == 400
    assert "sparse" in r.json()["error"]["message"]

"""POST /rerank on the fake backend: pairs carry their segment ids into the batch, scores come back ranked."""

from __future__ import annotations

import numpy as np

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task


def test_pairs_reach_the_engine_as_pairs_and_come_back_ranked(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    texts = ["the fox", "a cat sat", "red car"]
    r = client.post("/rerank", json={"query": "quick fox", "texts": texts, "return_text": True})
    assert r.status_code == 200, r.text
    ids, types = backend.tokenize_pairs([("quick fox", t) for t in texts], truncate=True)
    expected = [1 / (1 + np.exp(-backend.score_for(pair))) for pair in ids]
    assert [rank["index"] for rank in r.json()] == np.argsort(-np.array(expected), kind="stable").tolist()
    assert all(abs(rank["score"] - expected[rank["index"]]) < 1e-6 for rank in r.json())
    assert sorted(backend.batches[-1]) == sorted(ids)  # one batch, the three pairs
    assert sorted(backend.batch_types[-1]) == sorted(types)  # with their segments: query 0, document 1
    raw = client.post("/rerank", json={"query": "quick fox", "texts": texts, "raw_scores": True}).json()
    assert {rank["index"]: rank["score"] for rank in raw}[0] == np.float32(backend.score_for(ids[0]))


def test_dense_requests_carry_no_segments(make_client):
    backend = FakeBackend()
    client = make_client(backend=backend)
    assert client.post("/v1/embeddings", json={"input": "hello"}).status_code == 200
    assert backend.batch_types == [None]

"""TEI's /predict, /tokenize, /decode and /info on the fake backend."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve import __version__
from embedserve.backends.fake import CLS, SEP, FakeBackend
from embedserve.models.tasks import Task
from tests.support.api import assert_tei_error as tei_error

LABELS = ("negative", "neutral", "positive")


@pytest.fixture
def classifier(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}), labels=LABELS)
    return make_client(backend=backend), backend


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row.astype(np.float64) - row.max())
    return e / e.sum()


def test_predict_a_text_scores_it_alone_every_label_best_first(classifier):
    client, backend = classifier
    r = client.post("/predict", json={"inputs": "I like you"})
    assert r.status_code == 200, r.text
    (ids,) = backend.tokenize(["I like you"], truncate=True)
    assert backend.batches[-1] == [ids]  # [CLS] text [SEP]: one sequence, no empty second text
    assert backend.batch_types[-1] == [[0] * len(ids)]
    probabilities = softmax(backend.scores_for(ids))
    assert [p["label"] for p in r.json()] == [LABELS[i] for i in np.argsort(-probabilities)]
    assert all(abs(p["score"] - probabilities[LABELS.index(p["label"])]) < 1e-6 for p in r.json())


def test_predict_reads_inputs_as_tei_does(classifier):
    client, backend = classifier
    pair = client.post("/predict", json={"inputs": ["A man eats", "A man is eating"]}).json()
    assert len(pair) == 3 and isinstance(pair[0], dict)  # two strings: one pair
    (pair_ids,), (pair_types,) = backend.tokenize_pairs([("A man eats", "A man is eating")], truncate=True)
    assert backend.batches[-1] == [pair_ids] and backend.batch_types[-1] == [pair_types]
    single = client.post("/predict", json={"inputs": ["A man eats"]}).json()
    assert single == client.post("/predict", json={"inputs": "A man eats"}).json()  # one string in a list: one text
    batch = client.post("/predict", json={"inputs": [["A man eats"], ["A man eats", "A man is eating"]]}).json()
    assert batch == [single, pair]
    assert tei_error(client.post("/predict", json={"inputs": ["a", "b", "c"]}), 422).startswith("'inputs': must be")


def test_predict_raw_scores_and_a_one_label_model_gets_a_sigmoid(make_client):
    backend = FakeBackend(tasks=frozenset({Task.SCORE}))
    client = make_client(backend=backend)
    (ids,) = backend.tokenize(["hello"], truncate=True)
    raw = backend.score_for(ids)
    assert client.post("/predict", json={"inputs": "hello", "raw_scores": True}).json() == [
        {"score": pytest.approx(raw, abs=1e-6), "label": "LABEL_0"}
    ]
    (answer,) = client.post("/predict", json={"inputs": "hello"}).json()
    assert answer["score"] == pytest.approx(1 / (1 + np.exp(-raw)), abs=1e-6)


def test_a_batch_mixing_texts_and_pairs_keeps_each_rows_segments(classifier):
    client, backend = classifier
    r = client.post("/predict", json={"inputs": [["a b"], ["c", "d e"]], "raw_scores": True})
    assert r.status_code == 200, r.text
    (single,) = backend.tokenize(["a b"], truncate=True)
    (pair,), (types,) = backend.tokenize_pairs([("c", "d e")], truncate=True)
    assert backend.batches[-1] == [single, pair] and backend.batch_types[-1] == [[0] * len(single), types]
    top = r.json()[1][0]
    assert top["score"] == pytest.approx(float(backend.scores_for(pair).max()), abs=1e-6)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"inputs": []}, 422, "'inputs'"),
        ({"inputs": ""}, 422, "'inputs'"),
        ({"inputs": [["a", "b", "c"]]}, 422, "'inputs'"),
        ({"inputs": "a", "raw_scores": 1}, 422, "raw_scores"),
        ({"inputs": " ".join(["w"] * 40), "truncate": False}, 422, "truncation is off"),
    ],
)
def test_predict_refusals(classifier, body, status, words):
    client, _ = classifier
    assert words in tei_error(client.post("/predict", json=body), status)


def test_predict_needs_a_model_that_scores(client):
    assert tei_error(client.post("/predict", json={"inputs": "a"}), 400).endswith("its tasks are embed")


def test_predict_over_max_inputs(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.SCORE})), max_inputs=2)
    assert "at most 2" in tei_error(client.post("/predict", json={"inputs": [["a"], ["b"], ["c"]]}), 422)


def test_tokenize_gives_ids_texts_offsets_and_special_tokens(make_client):
    backend = FakeBackend(prompts={"query": "q: "})
    client = make_client(backend=backend)
    r = client.post("/tokenize", json={"inputs": "hello  world"})
    assert r.status_code == 200, r.text
    (tokens,) = r.json()
    assert tokens[0] == {"id": CLS, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert tokens[2] == {"id": backend.tokenize(["world"], truncate=True)[0][1], "text": "world", "special": False, "start": 7, "stop": 12}
    assert [t["id"] for t in tokens] == backend.tokenize(["hello  world"], truncate=True)[0]
    bare = client.post("/tokenize", json={"inputs": ["a", "b c"], "add_special_tokens": False}).json()
    assert [[t["text"] for t in seq] for seq in bare] == [["a"], ["b", "c"]]
    prompted = client.post("/tokenize", json={"inputs": "a", "prompt_name": "query"}).json()[0]
    assert [t["text"] for t in prompted] == ["[CLS]", "q:", "a", "[SEP]"] and prompted[2]["start"] == 3
    assert backend.batch_sizes == []  # tokenizing never queues model work


def test_tokenize_refusals(make_client):
    client = make_client(max_request_tokens=10)
    assert "'inputs'" in tei_error(client.post("/tokenize", json={"inputs": []}), 422)
    assert "no prompt named" in tei_error(client.post("/tokenize", json={"inputs": "a", "prompt_name": "x"}), 422)
    assert "characters" in tei_error(client.post("/tokenize", json={"inputs": "a" * 11}), 413)
    assert "tokens" in tei_error(client.post("/tokenize", json={"inputs": "a b c d e f g h i"}), 413)


def test_decode_one_or_several_id_lists(client):
    assert client.post("/decode", json={"ids": [CLS, 5, 6, SEP]}).json() == ["t5 t6"]
    r = client.post("/decode", json={"ids": [[CLS, 5, SEP], []], "skip_special_tokens": False})
    assert r.json() == ["[CLS] t5 [SEP]", ""]
    assert client.post("/decode", json={"ids": []}).json() == [""]  # TEI reads [] as one empty sequence


def test_decode_refusals(client):
    assert tei_error(client.post("/decode", json={"ids": [[1], [1000]]}), 422).startswith("ids[1] has token id 1000")
    assert "'ids'" in tei_error(client.post("/decode", json={"ids": [-1]}), 422)
    assert "'ids'" in tei_error(client.post("/decode", json={"ids": "abc"}), 422)


def test_info_of_an_embedding_model(make_client):
    client = make_client(max_queue=7, max_batch_size=3, max_inputs=11, max_batch_tokens=999, truncate=False)
    info = client.get("/info").json()
    assert info["model_id"] == info["served_model_name"] == "org/fake-model"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["model_dtype"] == "float32"
    assert (info["max_concurrent_requests"], info["max_batch_requests"], info["max_client_batch_size"]) == (7, 3, 11)
    assert (info["max_batch_tokens"], info["max_input_length"], info["auto_truncate"]) == (999, 16, False)
    assert info["version"] == __version__ and info["tokenization_workers"] >= 1
    assert info["model_sha"] is info["sha"] is info["docker_label"] is None


@pytest.mark.parametrize(
    "tasks, labels, model_type",
    [
        ({Task.SCORE}, LABELS, {"classifier": {"id2label": {"0": "negative", "1": "neutral", "2": "positive"},
                                               "label2id": {"negative": 0, "neutral": 1, "positive": 2}}}),
        ({Task.SCORE}, (), {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}),
        ({Task.SPARSE}, (), {"embedding": {"pooling": "splade"}}),
    ],
)
def test_info_model_type(make_client, tasks, labels, model_type):
    client = make_client(backend=FakeBackend(tasks=frozenset(tasks), labels=labels))
    assert client.get("/info").json()["model_type"] == model_type

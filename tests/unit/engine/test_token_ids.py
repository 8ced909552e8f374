"""Token-id inputs read as the model's own ids or as OpenAI's cl100k_base ids, one reading per request."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import CLS, SEP
from embedserve.engine.token_ids import cl100k

URL = "/v1/embeddings"


def _vector(client, value):
    r = client.post(URL, json={"input": value})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def test_cl100k_ids_are_embedded_as_the_text_they_spell(client):
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    ids = [cl100k().encode(t) for t in texts]
    np.testing.assert_array_equal(_vector(client, ids), _vector(client, texts))


def test_the_models_own_ids_stay_the_models_ids(client, fake_backend):
    (ids,) = fake_backend.tokenize(["alpha beta"], truncate=True)
    np.testing.assert_array_equal(_vector(client, [ids[1:-1]]), _vector(client, ["alpha beta"]))
    assert fake_backend.batches[-1] == [[CLS, *ids[1:-1], SEP]]


def test_one_reading_holds_for_the_whole_request(client, fake_backend):
    """Ids that fit the model in one input and not in another are read as cl100k for all of them."""
    text = "hello world"
    small = cl100k().encode("!")  # [0]: the model's id 0 too, alone
    mixed = _vector(client, [small, cl100k().encode(text)])
    np.testing.assert_array_equal(mixed, _vector(client, ["!", text]))


def test_a_forced_reading_is_obeyed(make_client, fake_backend):
    ids = cl100k().encode("the quick brown fox")
    model = make_client(token_ids="model")
    r = model.post(URL, json={"input": ids})
    assert r.status_code == 422 and "outside the vocabulary" in r.json()["error"]["message"]
    forced = make_client(token_ids="cl100k")
    (own,) = fake_backend.tokenize(["alpha"], truncate=True)
    as_cl = forced.post(URL, json={"input": own[1:-1]})
    assert as_cl.status_code == 200  # read as the cl100k text those ids spell, not as "alpha"
    assert as_cl.json()["data"][0]["embedding"] != _vector(forced, ["alpha"])[0].tolist()


@pytest.mark.parametrize("value", [[[100257]], [[100265]]])  # <|endoftext|>, and an id cl100k doesn't have
def test_special_and_unknown_cl100k_ids_are_refused(make_client, value):
    client = make_client(token_ids="cl100k")
    r = client.post(URL, json={"input": value})
    assert r.status_code == 422 and "not cl100k_base ids" in r.json()["error"]["message"]

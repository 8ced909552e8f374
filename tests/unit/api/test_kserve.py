"""KServe V1 and the Open Inference Protocol V2 (api/kserve.py) on the fake backend: shapes, errors in
KServe's `{"error": "..."}`, ids echoed, and vectors equal to /v1/embeddings' for the same inputs."""

from __future__ import annotations

import numpy as np
import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from tests.support.api import DIM, MODEL, assert_openai_error, expected, expected_for_ids

TEXTS = ["hello world", "a b c", "again"]


def kserve_error(response, status: int) -> str:
    """The status and exactly KServe's error shape; the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def openai_vectors(client, inputs) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": inputs, "model": MODEL})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def tensor(data, shape, datatype="BYTES", name="text") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer(client, *inputs, model=MODEL, **fields):
    return client.post(f"/v2/models/{model}/infer", json={"inputs": list(inputs), **fields})


# ---- V1 -------------------------------------------------------------------------------------

def test_v1_predict_gives_the_vectors_of_v1_embeddings(client, fake_backend):
    r = client.post(f"/v1/models/{MODEL}:predict", json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"predictions"}
    predictions = np.array(r.json()["predictions"], dtype=np.float32)
    assert predictions.shape == (3, DIM)
    assert np.array_equal(predictions, openai_vectors(client, TEXTS))  # the same numbers, to the bit
    assert np.allclose(predictions[0], expected(fake_backend, TEXTS[0]), atol=1e-6)


def test_v1_predict_takes_token_ids_and_the_models_short_name(client, fake_backend):
    r = client.post("/v1/models/fake-model:predict", json={"instances": [[5, 6, 7], [8]]})
    assert r.status_code == 200, r.text
    predictions = np.array(r.json()["predictions"], dtype=np.float32)
    assert np.array_equal(predictions, openai_vectors(client, [[5, 6, 7], [8]]))
    assert np.allclose(predictions[0], expected_for_ids(fake_backend, [1, 5, 6, 7, 2]), atol=1e-6)


@pytest.mark.parametrize(
    "model, body, status, words",
    [
        ("missing-model", {"instances": ["a"]}, 404, "missing-model"),
        (MODEL, {"instances": []}, 422, "'instances' must not be empty"),
        (MODEL, {"instances": ["a", [1]]}, 422, "'instances'"),
        (MODEL, {"instances": "a"}, 422, "'instances'"),
        (MODEL, {"instances": [""]}, 422, "instances"),
        (MODEL, {}, 422, "'instances' is required"),
    ],
)
def test_v1_predict_refusals_have_kserves_error_shape(client, model, body, status, words):
    assert words in kserve_error(client.post(f"/v1/models/{model}:predict", json=body), status)


def test_v1_predict_refuses_a_model_without_dense_vectors(make_client):
    client = make_client(backend=FakeBackend(tasks=frozenset({Task.SPARSE})))
    assert "dense" in kserve_error(client.post(f"/v1/models/{MODEL}:predict", json={"instances": ["a"]}), 400)


def test_v1_model_status_is_also_openais_model_card(client):
    """One GET /v1/models/{m} for both clients: KServe reads `name`/`ready`, OpenAI `id`/`object`/..."""
    for asked in (MODEL, "fake-model"):
        body = client.get(f"/v1/models/{asked}").json()
        assert body["name"] == asked and body["ready"] is True
        assert body["id"] == MODEL and body["object"] == "model" and {"created", "owned_by"} <= set(body)
    assert_openai_error(client.get("/v1/models/nope"), 404, code="model_not_found")  # the OpenAI route's shape


def test_predict_and_the_model_card_share_a_prefix_without_shadowing_each_other(client):
    r = client.get(f"/v1/models/{MODEL}:predict")  # not a model named 'org/fake-model:predict'
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = client.post(f"/v1/models/{MODEL}")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


# ---- V2 -------------------------------------------------------------------------------------

def test_v2_health_and_server_metadata(client, make_client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2").json()
    assert meta["name"] == "embedserve" and isinstance(meta["version"], str) and meta["extensions"] == []
    keyed = make_client(api_keys=("sk-test",))  # probes never ask for a key
    assert keyed.get("/v2/health/live").status_code == 200 and keyed.get("/v2/health/ready").status_code == 200
    assert kserve_error(keyed.get("/v2"), 401)


def test_v2_health_ready_is_503_while_the_server_drains(client):
    client.app.state.draining = True
    assert "draining" in kserve_error(client.get("/v2/health/ready"), 503)
    assert client.get("/v2/health/live").status_code == 200


def test_v2_model_metadata_and_ready(client):
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta == {
        "name": MODEL, "versions": [], "platform": "embedserve_fake",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "output-0", "datatype": "FP32", "shape": [-1, DIM]}],
    }
    assert client.get("/v2/models/fake-model/ready").json() == {"name": "fake-model", "ready": True}
    assert "'nope'" in kserve_error(client.get("/v2/models/nope"), 404)
    assert "'nope'" in kserve_error(client.get("/v2/models/nope/ready"), 404)
    # a name with a newline is still the route's 404, in its shape (schemathesis found it answered as no route)
    assert kserve_error(client.get("/v2/models/%0Anope"), 404)
    assert infer(client, tensor(["a"], [1]), model="%0Aloads").status_code != 405  # the route's, not a redirect's
    r = client.get(f"/v2/models/{MODEL}/infer")  # a method infer doesn't take, not a model named '.../infer'
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "data, shape",
    [(TEXTS, [3]), (TEXTS, [3, 1]), ([[t] for t in TEXTS], [3, 1])],
    ids=["[n]", "[n,1]-flat", "[n,1]-nested"],
)
def test_v2_infer_gives_fp32_rows_of_v1_embeddings_vectors(client, data, shape):
    r = infer(client, tensor(data, shape), id="req-42")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == MODEL and body["id"] == "req-42"
    (out,) = body["outputs"]
    assert out["name"] == "output-0" and out["datatype"] == "FP32" and out["shape"] == [3, DIM]
    assert len(out["data"]) == 3 * DIM  # flattened, row-major
    vectors = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    assert np.array_equal(vectors, openai_vectors(client, TEXTS))


@pytest.mark.parametrize("datatype", ["INT32", "INT64"])
@pytest.mark.parametrize("data", [[5, 6, 7, 8, 9, 10], [[5, 6, 7], [8, 9, 10]]], ids=["flat", "nested"])
def test_v2_infer_takes_token_id_tensors(client, fake_backend, datatype, data):
    r = infer(client, tensor(data, [2, 3], datatype, name="input_ids"), outputs=[{"name": "output-0"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert "id" not in body  # none was sent
    out = body["outputs"][0]
    vectors = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    assert np.array_equal(vectors, openai_vectors(client, [[5, 6, 7], [8, 9, 10]]))
    assert np.allclose(vectors[1], expected_for_ids(fake_backend, [1, 8, 9, 10, 2]), atol=1e-6)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_kserve_bodies_are_json_whatever_their_content_type_says(client, content_type):
    """As KServe's server reads them: tritonclient sends its JSON without a JSON Content-Type."""
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"id": "1", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}'
    r = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.json()["id"] == "1", r.text
    r = client.post(f"/v1/models/{MODEL}:predict", content=b'{"instances": ["a"]}', headers=headers)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


def test_v2_infer_answers_json_when_binary_outputs_are_asked_for(client):
    r = infer(client, tensor(["a"], [1]), parameters={"binary_data_output": True},
              outputs=[{"name": "output-0", "parameters": {"binary_data": True}}])
    assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == DIM


@pytest.mark.parametrize(
    "inputs, status, words",
    [
        ([tensor([1.0, 2.0], [2], "FP32")], 422, "datatype"),
        ([tensor(["a", "b"], [2], "INT64")], 422, "INT64 tensor's data must be token ids"),
        ([tensor([5, 6], [2], "BYTES")], 422, "BYTES tensor's data must be texts"),
        ([tensor(["a", "b"], [3])], 422, "holds 3 texts but data has 2"),
        ([tensor(["a", "b"], [1, 2])], 422, "shape [n] or [n, 1]"),
        ([tensor([["a", "b"]], [1, 1])], 422, "one text per row"),
        ([tensor([5, 6, 7], [3], "INT32")], 422, "[n, length]"),
        ([tensor([5, 6, 7], [2, 2], "INT32")], 422, "holds 4 ids but data has 3"),
        ([tensor([[5, 6], [7]], [2, 2], "INT64")], 422, "does not have shape [2, 2]"),
        ([tensor([], [0])], 422, "'inputs[0].data' must not be empty"),
        ([tensor(["ok", ""], [2])], 422, "'inputs[0].data'"),  # an empty text
        ([tensor([-1], [1, 1], "INT64")], 422, "'inputs[0].data'"),  # not a token id
        ([], 422, "inputs"),
        ([tensor(["a"], [1]), tensor(["b"], [1])], 422, "inputs"),
    ],
)
def test_v2_infer_refusals_have_kserves_error_shape(client, inputs, status, words):
    assert words in kserve_error(infer(client, *inputs), status)


def test_v2_infer_other_refusals(client, make_client):
    assert "'missing-model'" in kserve_error(infer(client, tensor(["a"], [1]), model="missing-model"), 404)
    assert "'probs'" in kserve_error(infer(client, tensor(["a"], [1]), outputs=[{"name": "probs"}]), 422)
    assert "'id'" in kserve_error(infer(client, tensor(["a"], [1]), id=42), 422)
    assert "JSON" in kserve_error(client.post(f"/v2/models/{MODEL}/infer", content=b"{", headers={"content-type": "application/json"}), 422)
    binary = client.post(f"/v2/models/{MODEL}/infer", content=b'{"inputs":[]}\x00\x00', headers={
        "content-type": "application/octet-stream", "Inference-Header-Content-Length": "13"})
    assert "binary_data=False" in kserve_error(binary, 422)
    sparse_only = make_client(backend=FakeBackend(tasks=frozenset({Task.SPARSE})))
    assert "dense" in kserve_error(infer(sparse_only, tensor(["a"], [1])), 400)

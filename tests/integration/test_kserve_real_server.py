"""KServe V1 and V2 against the real server on the real default model, V2 through Triton's own HTTP
client (`tritonclient[http]`, which speaks the Open Inference Protocol): the vectors are
/v1/embeddings' (the same numbers) and sentence-transformers' (cosine >= 0.9999)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.integration.conftest import MODEL, cosines

pytestmark = pytest.mark.integration

tritonhttp = pytest.importorskip("tritonclient.http")  # the dev extra installs it

SENTENCES = ["A man is playing a guitar.", "The new movie is awesome.", "A woman is slicing an onion."]


def openai_vectors(url: str, inputs) -> np.ndarray:
    r = httpx.post(url + "/v1/embeddings", json={"input": inputs, "model": MODEL}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


@pytest.fixture
def triton(server):
    client = tritonhttp.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def text_tensor(texts: list[str], shape: list[int]):
    tensor = tritonhttp.InferInput("text", shape, "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object).reshape(shape), binary_data=False)
    return tensor


def test_v1_predict_equals_v1_embeddings_and_sentence_transformers(server, reference_model):
    r = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", json={"instances": SENTENCES}, timeout=60)
    assert r.status_code == 200, r.text
    predictions = np.array(r.json()["predictions"], dtype=np.float32)
    assert np.array_equal(predictions, openai_vectors(server.url, SENTENCES))
    assert cosines(predictions, reference_model.encode(SENTENCES)).min() >= 0.9999
    status = httpx.get(f"{server.url}/v1/models/all-MiniLM-L6-v2", timeout=10).json()  # KServe V1 and OpenAI alike
    assert status["name"] == "all-MiniLM-L6-v2" and status["ready"] is True and status["id"] == MODEL
    missing = httpx.post(f"{server.url}/v1/models/org/nope:predict", json={"instances": ["a"]}, timeout=60)
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


def test_tritonclient_health_metadata_and_readiness(server, triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL) and not triton.is_model_ready("org/nope")
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 384]}]
    assert triton.get_server_metadata()["name"] == "embedserve"


@pytest.mark.parametrize("shape", [[3], [3, 1]])
def test_tritonclient_infer_equals_v1_embeddings_and_sentence_transformers(server, triton, reference_model, shape):
    outputs = [tritonhttp.InferRequestedOutput("output-0", binary_data=False)]
    result = triton.infer(MODEL, [text_tensor(SENTENCES, shape)], outputs=outputs, request_id="req-7")
    vectors = result.as_numpy("output-0")
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert result.get_response()["id"] == "req-7" and result.get_response()["model_name"] == MODEL
    assert np.array_equal(vectors, openai_vectors(server.url, SENTENCES))
    assert cosines(vectors, reference_model.encode(SENTENCES)).min() >= 0.9999


def test_tritonclient_default_binary_outputs_are_answered_in_json(server, triton):
    """tritonclient asks for binary outputs unless told otherwise; JSON ones read the same."""
    result = triton.infer(MODEL, [text_tensor(SENTENCES[:1], [1])])
    assert np.array_equal(result.as_numpy("output-0"), openai_vectors(server.url, SENTENCES[:1]))


def test_tritonclient_token_ids_equal_the_texts(server, triton, reference_model):
    ids = [reference_model.tokenizer(s, add_special_tokens=False)["input_ids"] for s in SENTENCES[:2]]
    width = min(len(row) for row in ids)
    rows = np.array([row[:width] for row in ids], dtype=np.int64)  # a tensor is rectangular: cut to the shortest
    tensor = tritonhttp.InferInput("input_ids", list(rows.shape), "INT64")
    tensor.set_data_from_numpy(rows, binary_data=False)
    result = triton.infer(MODEL, [tensor], outputs=[tritonhttp.InferRequestedOutput("output-0", binary_data=False)])
    assert np.array_equal(result.as_numpy("output-0"), openai_vectors(server.url, rows.tolist()))
    texts = [reference_model.tokenizer.decode(row) for row in rows.tolist()]
    assert cosines(result.as_numpy("output-0"), reference_model.encode(texts)).min() >= 0.999


def test_tritonclient_errors(server, triton):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("org/nope", [text_tensor(["a"], [1])])
    assert unknown.value.status() == "404" and "'org/nope'" in unknown.value.message()
    tensor = tritonhttp.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["a"], dtype=object))  # binary_data=True: the extension we don't serve
    with pytest.raises(InferenceServerException) as binary:
        triton.infer(MODEL, [tensor])
    assert binary.value.status() == "422" and "binary_data=False" in binary.value.message()

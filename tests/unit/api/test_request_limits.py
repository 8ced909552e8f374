"""Server limits as a client meets them: inputs per request, input length, body size."""

from __future__ import annotations

import json

import pytest

from tests.support.api import assert_openai_error

URL = "/v1/embeddings"
MAX_SEQ = 16  # FakeBackend: 14 words + CLS + SEP


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


# ---- max_inputs -------------------------------------------------------------------------


def test_max_inputs_is_allowed(make_client):
    client = make_client(max_inputs=3)
    r = client.post(URL, json={"input": ["a", "b", "c"]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3


@pytest.mark.parametrize("value", [["a", "b", "c", "d"], [[1], [2], [3], [4]]], ids=["strings", "token-lists"])
def test_more_inputs_than_max_inputs(make_client, value):
    client = make_client(max_inputs=3)
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param="input", code="invalid_input")
    assert error["message"] == "'input' has 4 items; at most 3 are allowed per request"


def test_one_token_list_longer_than_max_inputs_is_one_input(make_client):
    client = make_client(max_inputs=3)
    r = client.post(URL, json={"input": [5, 6, 7, 8, 9]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1


# ---- input length -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [words(20), [7] * 20], ids=["text", "token-ids"])
def test_long_input_is_truncated_by_default(client, fake_backend, value):
    r = client.post(URL, json={"input": value})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"] == {"prompt_tokens": MAX_SEQ, "total_tokens": MAX_SEQ}
    # Truncated to the same vector as the input cut to 14 words / ids.
    cut = " ".join(value.split()[: MAX_SEQ - 2]) if isinstance(value, str) else value[: MAX_SEQ - 2]
    same = client.post(URL, json={"input": cut}).json()
    assert same["usage"]["prompt_tokens"] == MAX_SEQ
    assert same["data"][0]["embedding"] == body["data"][0]["embedding"]


def test_input_of_exactly_max_length_passes_without_truncation(make_client):
    client = make_client(truncate=False)
    r = client.post(URL, json={"input": words(MAX_SEQ - 2)})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == MAX_SEQ


@pytest.mark.parametrize(
    ("value", "where"),
    [(words(20), "input[0]"), (["short", words(20)], "input[1]"), ([[1, 2], [7] * 20], "input[1]")],
    ids=["text", "second-text", "second-token-list"],
)
def test_long_input_is_422_when_truncation_is_off(make_client, value, where):
    client = make_client(truncate=False)
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param=where, code="invalid_input")
    assert f"{where} has at least 22 tokens" in error["message"]
    assert f"at most {MAX_SEQ}" in error["message"]
    assert "truncation is off" in error["message"]


# ---- body size --------------------------------------------------------------------------

LIMIT = 200


def body_of_size(size: int) -> bytes:
    """A valid request body of exactly `size` bytes."""
    base = json.dumps({"input": ""}).encode()
    padding = size - len(base)
    assert padding >= 1
    return json.dumps({"input": "x" * padding}).encode()


def assert_too_large(r) -> None:
    error = assert_openai_error(r, 413, param=None, code="payload_too_large")
    assert error["message"] == f"request body is larger than the limit of {LIMIT} bytes"
    assert r.headers.get("x-request-id")


def test_body_at_the_limit_is_served(make_client):
    client = make_client(max_body_bytes=LIMIT)
    raw = body_of_size(LIMIT)
    assert len(raw) == LIMIT
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_body_over_limit_with_content_length_is_413(make_client):
    client = make_client(max_body_bytes=LIMIT)
    raw = body_of_size(LIMIT + 1)
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert r.request.headers["content-length"] == str(LIMIT + 1)
    assert_too_large(r)


def test_huge_body_with_content_length_is_413(make_client):
    client = make_client(max_body_bytes=LIMIT)
    r = client.post(URL, json={"input": ["many words here"] * 10_000})
    assert_too_large(r)


@pytest.mark.parametrize("chunk", [16, 1000], ids=["small-chunks", "one-big-chunk"])
def test_body_over_limit_streamed_chunked_is_413(make_client, chunk):
    client = make_client(max_body_bytes=LIMIT)
    raw = body_of_size(LIMIT * 5)

    def stream():
        for i in range(0, len(raw), chunk):
            yield raw[i : i + chunk]

    r = client.post(URL, content=stream(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert_too_large(r)


def test_streamed_body_under_limit_is_served(make_client):
    client = make_client(max_body_bytes=LIMIT)
    raw = body_of_size(LIMIT)

    def stream():
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    r = client.post(URL, content=stream(), headers={"content-type": "application/json"})
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 200, r.text


def test_server_still_serves_after_413(make_client):
    client = make_client(max_body_bytes=LIMIT)
    assert client.post(URL, content=body_of_size(LIMIT * 2), headers={"content-type": "application/json"}).status_code == 413
    r = client.post(URL, json={"input": "small"})
    assert r.status_code == 200, r.text


def test_413_carries_cors_headers_like_other_errors(make_client):
    client = make_client(max_body_bytes=LIMIT)
    origin = {"Origin": "https://app.example"}
    other_error = client.post(URL, json={"input": ""}, headers=origin)
    assert other_error.status_code == 422
    assert other_error.headers["access-control-allow-origin"] == "*"
    r = client.post(URL, content=body_of_size(LIMIT + 1), headers={"content-type": "application/json", **origin})
    assert_too_large(r)
    assert r.headers.get("access-control-allow-origin") == "*"

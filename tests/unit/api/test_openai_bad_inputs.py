"""Requests POST /v1/embeddings must refuse: each gets a 4xx in OpenAI's error shape.

Limits (body size, number of inputs, input length) are covered in test_request_limits.py,
and a sweep of odd bodies that must never cause a 5xx in test_openai_fuzz_bodies.py.
"""

from __future__ import annotations

import pytest

from tests.support.api import assert_openai_error

URL = "/v1/embeddings"
INPUT_SHAPES = "must be a string, an array of strings, an array of token ids, or an array of token-id arrays"


# ---- empty inputs -----------------------------------------------------------------------


def test_empty_list(client):
    error = assert_openai_error(client.post(URL, json={"input": []}), 422, param="input", code="invalid_input")
    assert "'input'" in error["message"] and "empty" in error["message"]


@pytest.mark.parametrize(
    ("value", "where", "kind"),
    [
        ("", "input[0]", "string"),
        (["a", ""], "input[1]", "string"),
        (["", "a"], "input[0]", "string"),
        ([[]], "input[0]", "token list"),
        ([[1, 2], []], "input[1]", "token list"),
    ],
)
def test_empty_item_is_named(client, value, where, kind):
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param=where, code="invalid_input")
    assert error["message"] == f"{where} is an empty {kind}"


# ---- wrong types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        [1, "a"],
        ["a", 1],
        5,
        None,
        True,
        3.5,
        {"text": "a"},
        [["a"]],
        [[1, "a"]],
        [[1, 2], "a"],
        [[[1]]],
        [1.0, 2.0],
        [[1.5]],
        [True, False],
        [None],
        ["a", None],
    ],
    ids=repr,
)
def test_input_of_wrong_type(client, value):
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param="input", code="invalid_request")
    assert error["message"] == f"'input': {INPUT_SHAPES}"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("encoding_format", "hex"),
        ("encoding_format", "FLOAT"),
        ("encoding_format", None),
        ("dimensions", "x"),
        ("dimensions", 2.5),
        ("dimensions", [4]),
        ("model", 7),
        ("model", ["org/fake-model"]),
        ("user", {"id": 1}),
    ],
    ids=repr,
)
def test_other_field_of_wrong_type(client, field, value):
    r = client.post(URL, json={"input": "x", field: value})
    error = assert_openai_error(r, 422, param=field, code="invalid_request")
    assert error["message"].startswith(f"'{field}': ")


def test_encoding_format_message_lists_the_choices(client):
    error = assert_openai_error(client.post(URL, json={"input": "x", "encoding_format": "hex"}), 422)
    assert "float" in error["message"] and "base64" in error["message"]


def test_missing_input(client):
    error = assert_openai_error(client.post(URL, json={"model": "org/fake-model"}), 422, param="input")
    assert error["message"] == "'input' is required"


def test_several_errors_are_counted(client):
    r = client.post(URL, json={"input": 5, "dimensions": "x", "encoding_format": "hex"})
    error = assert_openai_error(r, 422)
    assert "(and 2 more errors)" in error["message"]


# ---- token ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "where", "bad"),
    [
        ([5000], "input[0]", 5000),
        ([1000], "input[0]", 1000),  # vocab_size itself is one past the end
        ([-1], "input[0]", -1),
        ([[5, 6], [7, 2**70]], "input[1]", 2**70),
    ],
)
def test_token_id_outside_vocabulary_when_ids_are_the_models(make_client, value, where, bad):
    client = make_client(token_ids="model")
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param=where, code="invalid_input")
    assert f"token id {bad}" in error["message"]
    assert "0..999" in error["message"]


@pytest.mark.parametrize(
    ("value", "where", "bad"),
    [([200_000], "input[0]", 200_000), ([-1], "input[0]", -1), ([[5, 6], [7, 2**70]], "input[1]", 2**70)],
)
def test_ids_in_neither_vocabulary_are_refused_naming_both(client, value, where, bad):
    error = assert_openai_error(client.post(URL, json={"input": value}), 422, param=where, code="invalid_input")
    assert f"token id {bad}" in error["message"] and "0..999" in error["message"]
    assert "cl100k_base" in error["message"] and "check_embedding_ctx_length=False" in error["message"]


def test_largest_vocabulary_id_is_accepted(client):
    r = client.post(URL, json={"input": [0, 999]})
    assert r.status_code == 200, r.text


# ---- bodies that are not a JSON object --------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"input": "a"', b"{input: 'a'}", b'{"input": "a",}', b"not json at all", b'{"input": "a"} trailing'],
    ids=repr,
)
def test_malformed_json(client, raw):
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(r, 422, param=None, code="invalid_request")
    assert error["message"].startswith("request body is not valid JSON")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"a"', b"42", b"null"], ids=repr)
def test_json_that_is_not_an_object(client, raw):
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(r, 422, code="invalid_request")
    assert error["message"].startswith("request body")


def test_empty_body(client):
    r = client.post(URL, content=b"", headers={"content-type": "application/json"})
    error = assert_openai_error(r, 422, param=None)
    assert error["message"] == "request body is required"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_non_json_content_type(client, content_type):
    r = client.post(URL, content=b'{"input": "a"}', headers={"content-type": content_type})
    error = assert_openai_error(r, 422, param=None, code="invalid_request")
    assert error["message"].startswith("request body")


def test_json_suffix_content_type_is_json(client):
    r = client.post(URL, content=b'{"input": "a"}', headers={"content-type": "application/vnd.api+json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "raw",
    [b'{"input": "caf\xe9"}', b'{"input": [1' + b"0" * 5000 + b"]}", b"[" * 100_000],
    ids=["not-utf8", "huge-int", "deep-nesting"],
)
def test_unparsable_body_is_422_like_other_malformed_json(client, raw):
    r = client.post(URL, content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, 422, code="invalid_request")


# ---- wrong method and route -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(client, method):
    r = client.request(method, URL)
    error = assert_openai_error(r, 405, param=None, code="method_not_allowed")
    assert error["message"] == "Method Not Allowed"
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize(("method", "path"), [("GET", "/nope"), ("POST", "/v1/embedding"), ("GET", "/v2/models")])
def test_unknown_route_is_404(client, method, path):
    r = client.request(method, path)
    error = assert_openai_error(r, 404, param=None, code="not_found")
    assert error["message"] == f"no route for {method} {path}"

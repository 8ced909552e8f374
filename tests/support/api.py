"""Helpers the API tests share: OpenAI's error shape, and the vectors the FakeBackend computes."""

from __future__ import annotations

import numpy as np

MODEL = "org/fake-model"  # the one model the `client` fixture serves
DIM = 8  # FakeBackend's vector size


# The routes of the servers we replace (FastAPI apps, or the Flask server): their errors also carry
# the message as FastAPI's `detail`, where those servers' clients read it.
DROP_IN_PATHS = frozenset(
    {"/", "/embedding", "/embeddings", "/model/info", "/model/load", "/model/unload", "/v1/encode", "/vectorize",
     "/vectorize-batch"}
)


def assert_error_envelope(response, status: int, *, type_: str, code=...) -> dict:
    """The status, a JSON body with exactly OpenAI's error keys (and `detail`, the same message, on a
    drop-in route), `type_` and (if given) `code`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if response.request.url.path in DROP_IN_PATHS:
        assert set(body) == {"error", "detail"} and body["detail"] == body["error"]["message"], body
    else:
        assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    if code is not ...:
        assert error["code"] == code
    return error


def assert_openai_error(response, status: int, *, type_: str | None = None, param=..., code=...) -> dict:
    """`assert_error_envelope` plus a non-empty message and (if given) `param`.

    `type_` defaults to "invalid_request_error" for a 4xx and "server_error" for a 5xx.
    """
    if type_ is None:
        type_ = "invalid_request_error" if status < 500 else "server_error"
    error = assert_error_envelope(response, status, type_=type_, code=code)
    assert isinstance(error["message"], str) and error["message"]
    if param is not ...:
        assert error["param"] == param
    return error


def assert_tei_error(response, status: int, error_type: str = "Validation") -> str:
    """The status, exactly TEI's error shape `{"error", "error_type"}` with that kind; the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


def raw_vector(backend, text: str) -> np.ndarray:
    """The backend's unnormalised vector for `text`, as float64."""
    (ids,) = backend.tokenize([text], truncate=True)
    return backend.vector_for(ids).astype(np.float64)


def expected_for_ids(backend, ids: list[int], dims: int | None = None) -> np.ndarray:
    """The normalised vector a client should get for these token ids (cut to `dims` first)."""
    raw = backend.vector_for(ids).astype(np.float64)
    if dims is not None:
        raw = raw[:dims]
    return raw / np.linalg.norm(raw)


def expected(backend, text: str, dims: int | None = None) -> np.ndarray:
    """The normalised vector a client should get for `text` (cut to `dims` first)."""
    (ids,) = backend.tokenize([text], truncate=True)
    return expected_for_ids(backend, ids, dims)

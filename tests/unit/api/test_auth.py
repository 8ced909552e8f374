"""API keys and scopes as a client meets them: where keys go, 401 and 403, open routes, key files."""

from __future__ import annotations

import logging

import pytest

from embedserve.api.auth import KeyFileError, KeyStore, parse_key_file, presented_key
from embedserve.api.routing import Scope
from embedserve.settings import Settings
from tests.support.api import assert_openai_error

EMBED_BODY = {"input": "hello"}


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# scoped keys\nsk-embed embed\n\nsk-admin embed,admin\nsk-ops admin\nsk-plain\n")
    return path


@pytest.fixture
def keyed(make_client, key_file):
    return make_client(api_keys=("sk-flag",), api_key_file=key_file)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-flag"},
        {"Authorization": "bearer sk-flag"},
        {"Authorization": "sk-flag"},  # the bare key, as some TEI clients send it
        {"X-Api-Key": "sk-flag"},
        {"Authorization": "Bearer sk-embed"},
    ],
)
def test_a_known_key_in_any_accepted_header_is_served(keyed, headers):
    r = keyed.post("/v1/embeddings", json=EMBED_BODY, headers=headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 8


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Bearer "}, {"X-Api-Key": "sk-flag-but-longer"},
     {"Authorization": "Basic c2stZmxhZzo="}, {"X-Api-Key": ""}],
)
def test_no_key_or_a_wrong_one_is_401_in_openai_shape(keyed, fake_backend, headers):
    r = keyed.post("/v1/embeddings", json=EMBED_BODY, headers=headers)
    error = assert_openai_error(r, 401, type_="invalid_request_error", code="invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.headers.get("x-request-id")
    assert "sk-" not in error["message"]  # never echoes what was sent
    assert fake_backend.batch_sizes == []


def test_an_embed_only_key_gets_403_on_admin_routes_and_the_admin_key_passes(keyed):
    for key in ("sk-embed",):
        r = keyed.post("/model/load", params={"model_name": "org/second"}, headers={"X-Api-Key": key})
        error = assert_openai_error(r, 403, code="insufficient_scope")
        assert "'admin' scope" in error["message"]
        assert_openai_error(keyed.post("/model/unload", headers={"X-Api-Key": key}), 403, code="insufficient_scope")
    r = keyed.post("/model/load", params={"model_name": "org/second"}, headers={"X-Api-Key": "sk-admin"})
    assert r.status_code == 200, r.text
    # an admin-only key can't embed, and a bare key in the file (or a flag key) has every scope
    assert_openai_error(keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"X-Api-Key": "sk-ops"}), 403)
    for key in ("sk-plain", "sk-flag"):
        assert keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"X-Api-Key": key}).status_code == 200


def test_health_ready_and_metrics_stay_open(keyed):
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/ready").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_protect_metrics_asks_any_valid_key_for_metrics_only(make_client):
    client = make_client(api_keys=("sk-flag",), protect_metrics=True)
    assert_openai_error(client.get("/metrics"), 401, code="invalid_api_key")
    assert client.get("/metrics", headers={"X-Api-Key": "sk-flag"}).text.startswith("# HELP")
    assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200


def test_without_keys_the_server_is_open_as_before(client):
    assert client.post("/v1/embeddings", json=EMBED_BODY).status_code == 200
    assert client.post("/model/load", params={"model_name": "org/second"}).status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_unknown_paths_and_docs_need_a_key_too(keyed):
    for method, path in (("GET", "/nope"), ("POST", "/v1/embeddings/"), ("GET", "/docs"), ("GET", "/openapi.json"),
                         ("DELETE", "/v1/embeddings"), ("GET", "/")):
        assert_openai_error(keyed.request(method, path), 401, code="invalid_api_key")
    assert keyed.get("/docs", headers={"X-Api-Key": "sk-embed"}).status_code == 200
    assert keyed.get("/nope", headers={"X-Api-Key": "sk-embed"}).status_code == 404


def test_cors_preflight_needs_no_key_and_a_401_carries_cors_headers(keyed):
    preflight = keyed.options(
        "/v1/embeddings",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key,content-type"},
    )
    assert preflight.status_code == 200
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    r = keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"Origin": "https://app.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"


def test_the_key_check_runs_before_the_body_is_read(keyed):
    # a body over --max-body-bytes would be 413 if it were read; without a key it is 401
    r = keyed.post("/v1/embeddings", content=b"x" * (17 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_keys_never_reach_the_log(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"Authorization": "Bearer sk-flag"})
    keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"Authorization": "Bearer sk-not-a-key-123"})
    keyed.post("/v1/embeddings", json=EMBED_BODY, headers={"X-Api-Key": "sk-embed"})
    assert caplog.records, "nothing was logged: the check proves nothing"
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for key in ("sk-flag", "sk-not-a-key-123", "sk-embed"):
        assert key not in text


def test_the_key_file_is_reread_on_reload(make_client, tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-old embed\n")
    client = make_client(api_key_file=path)
    headers = {"X-Api-Key": "sk-new"}
    assert client.post("/v1/embeddings", json=EMBED_BODY, headers=headers).status_code == 401
    path.write_text("sk-new embed\n")
    assert client.app.state.keys.reload() is True  # what SIGHUP calls (tests/reliability: the real signal)
    assert client.post("/v1/embeddings", json=EMBED_BODY, headers=headers).status_code == 200
    assert client.post("/v1/embeddings", json=EMBED_BODY, headers={"X-Api-Key": "sk-old"}).status_code == 401
    path.write_text("sk-newer nonsense-scope\n")  # a broken file keeps the keys in force
    assert client.app.state.keys.reload() is False
    assert client.post("/v1/embeddings", json=EMBED_BODY, headers=headers).status_code == 200


def test_a_bad_key_file_stops_start_up_without_showing_keys(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("sk-fine embed\nsk-secret-value embd\n")
    with pytest.raises(KeyFileError) as info:
        parse_key_file(path)
    assert "line 2" in str(info.value) and "'embd'" in str(info.value) and "sk-" not in str(info.value)
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyStore(Settings(api_key_file=tmp_path / "missing.txt"))


def test_every_key_is_compared_whatever_matched_first(tmp_path, monkeypatch):
    """Constant time: compare_digest runs once per configured key, for a hit, a miss or an early match."""
    import embedserve.api.auth as auth

    path = tmp_path / "keys.txt"
    path.write_text("k1 embed\nk2 admin\nk3 embed\nk1 admin\n")
    store = KeyStore(Settings(api_key_file=path))
    calls = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for presented, expected in ((b"k1", {Scope.EMBED, Scope.ADMIN}), (b"k3", {Scope.EMBED}), (b"zz", None)):
        calls.clear()
        assert store.scopes_for(presented) == (frozenset(expected) if expected else None)
        assert len(calls) == 4


@pytest.mark.parametrize(
    ("headers", "expected"),
    [([(b"authorization", b"Bearer abc")], b"abc"), ([(b"authorization", b"abc")], b"abc"),
     ([(b"x-api-key", b" abc ")], b"abc"), ([(b"authorization", b"Bearer  abc ")], b"abc"), ([], None),
     ([(b"authorization", b"Bearer a b")], b"a b")],
)
def test_presented_key(headers, expected):
    assert presented_key({"headers": headers}) == expected

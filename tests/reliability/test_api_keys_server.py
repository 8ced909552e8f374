"""API keys on the real server: the official openai client with its key, SIGHUP reloading the key file,
and no key in the server's log."""

from __future__ import annotations

import signal
import time

import httpx
import openai
import pytest

from .conftest import FAST_START, start_server, stop_server

pytestmark = pytest.mark.integration

KEY = "sk-reliability-0123456789"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    key_file = folder / "keys.txt"
    key_file.write_text("sk-embed-only embed\n")
    srv = start_server(folder, *FAST_START, "--api-key", KEY, "--api-key-file", str(key_file))
    srv.key_file = key_file
    yield srv
    stop_server(srv)


def test_the_openai_client_works_with_its_key_and_fails_without(keyed):
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=["A man is playing a guitar."])
    assert len(response.data[0].embedding) == 384
    assert "sentence-transformers/all-MiniLM-L6-v2" in [m.id for m in client.models.list().data]
    wrong = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.embeddings.create(model="all-MiniLM-L6-v2", input="hi")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_admin_routes_refuse_an_embed_only_key(keyed):
    headers = {"Authorization": "Bearer sk-embed-only"}
    assert httpx.post(keyed.url + "/v1/embeddings", json={"input": "hi"}, headers=headers).status_code == 200
    r = httpx.post(keyed.url + "/model/unload", headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert httpx.get(keyed.url + "/health").json()["status"] == "healthy"  # still served: nothing unloaded


def test_sighup_reloads_the_key_file(keyed):
    keyed.key_file.write_text("sk-embed-only embed\nsk-added-later embed\n")
    headers = {"X-Api-Key": "sk-added-later"}
    assert httpx.post(keyed.url + "/v1/embeddings", json={"input": "hi"}, headers=headers).status_code == 401
    keyed.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.post(keyed.url + "/v1/embeddings", json={"input": "hi"}, headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the new key was never accepted after SIGHUP"
        time.sleep(0.1)
    assert keyed.process.poll() is None  # SIGHUP reloads, it does not stop the server


def test_no_key_ever_reaches_the_log(keyed):
    for key in (KEY, "sk-embed-only", "sk-not-configured-999"):
        httpx.post(keyed.url + "/v1/embeddings", json={"input": "hi"}, headers={"Authorization": f"Bearer {key}"})
    log = keyed.log()
    assert "401" in log and "200" in log  # the requests were logged...
    for key in (KEY, "sk-embed-only", "sk-added-later", "sk-not-configured-999"):
        assert key not in log  # ...their keys were not

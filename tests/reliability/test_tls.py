"""HTTPS with --ssl-keyfile / --ssl-certfile, on a certificate this test makes (trustme)."""

from __future__ import annotations

import socket
import ssl
import time

import httpx
import pytest
import trustme

from tests.reliability.conftest import FAST_START, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2.0  # also bounds the TLS handshake
MARGIN = 1.5


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def start_tls_server(tmp_path, ca: trustme.CA, *args: str, timeout: float = 120.0) -> ServerProcess:
    """conftest's start_server with a certificate `ca` issued, polling /ready over HTTPS with `ca` trusted."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_file, cert_file = tmp_path / "server.key", tmp_path / "server.pem"
    cert.private_key_pem.write_to_path(key_file)
    cert.cert_chain_pems[0].write_to_path(cert_file)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(cert_file, append=True)
    tls = ("--ssl-keyfile", str(key_file), "--ssl-certfile", str(cert_file))
    return start_server(tmp_path, *tls, *args, timeout=timeout, scheme="https", verify=trusting(ca))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, ca):
    srv = start_tls_server(tmp_path_factory.mktemp("tls"), ca, *FAST_START, "--header-timeout", str(HEADER_TIMEOUT))
    yield srv
    stop_server(srv)


def test_https_with_the_ca_trusted_serves_embeddings(tls_server, ca):
    payload = {"model": "all-MiniLM-L6-v2", "input": ["A man is playing a guitar.", "A cat sleeps."]}
    response = httpx.post(tls_server.url + "/v1/embeddings", json=payload, verify=trusting(ca), timeout=30)
    assert response.status_code == 200
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert [len(vector) for vector in vectors] == [384, 384]


def test_a_client_that_does_not_trust_the_ca_is_refused(tls_server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_server.url + "/health", timeout=10)


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server):
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_server.url.replace("https://", "http://") + "/health", timeout=10)


def test_a_connection_that_never_starts_its_handshake_is_closed(tls_server):
    """The handshake is bounded by --header-timeout (asyncio's own default is 60 s)."""
    port = int(tls_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT + 10) as sock:
        started = time.monotonic()
        try:
            received = sock.recv(1024)
        except ConnectionResetError:
            received = b""
        waited = time.monotonic() - started
    assert received == b""
    assert HEADER_TIMEOUT - 0.25 <= waited <= HEADER_TIMEOUT + MARGIN, waited

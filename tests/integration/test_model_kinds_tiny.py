"""Folders that are not embedders are never served as mean-pooling embedders.

Before models/tasks.py, sentence-transformers loaded any folder as a mean-pooling embedder and
the server answered 200 with meaningless vectors. Here tiny random folders saved by the real
transformers / sentence-transformers code go through the real loading code (in-process app
with the default backend factory, and `embedserve serve` for the refusal): a reranker
(…ForSequenceClassification, and a sentence-transformers CrossEncoder save) is a `score` model,
an MLM is a SPLADE `sparse` model, and a token classifier is refused at load saying what it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.integration.conftest import start_server
from tests.support.tiny_models import build_bert_model

pytestmark = pytest.mark.integration


def convert(base: Path, target: Path, auto_class: str, **options) -> Path:
    """`base` re-saved with a transformers head class (no sentence-transformers files)."""
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(str(base), **options)
    model.save_pretrained(str(target))
    transformers.AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(target))
    return target


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    from sentence_transformers import CrossEncoder

    root = tmp_path_factory.mktemp("kinds")
    base = build_bert_model(root / "base", write_st_config=False)
    reranker = convert(base, root / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    CrossEncoder(str(reranker)).save(str(root / "acme--st-cross-encoder"))
    return {
        "reranker": reranker,
        "st-cross-encoder": root / "acme--st-cross-encoder",
        "mlm": convert(base, root / "acme--mlm", "AutoModelForMaskedLM"),
        "tagger": convert(base, root / "acme--tagger", "AutoModelForTokenClassification", num_labels=3),
    }


@pytest.fixture(scope="module")
def client(folders, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    models = tuple(str(folders[name]) for name in ("reranker", "st-cross-encoder", "mlm"))
    settings = Settings(models=models, device="cpu", threads=2, cache_dir=cache, load_on_demand=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    "name, kind, tasks",
    [("reranker", "cross-encoder", ["score"]), ("st-cross-encoder", "cross-encoder", ["score"]), ("mlm", "splade", ["sparse"])],
)
def test_a_non_embedder_is_loaded_as_what_it_is_and_refuses_dense_requests(client, folders, name, kind, tasks):
    model = str(folders[name])
    described = {m["model_name"]: m for m in client.get("/model/info").json()["loaded_models"]}[model]
    assert (described["kind"], described["tasks"]) == (kind, tasks)
    for path, body in (
        ("/v1/embeddings", {"input": "hello world", "model": model}),
        ("/embeddings", {"texts": ["hello world"], "model_name": model}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"]["message"].endswith(f"does not do dense embeddings: its tasks are {', '.join(tasks)}")


def test_the_mlm_answers_sparse_requests(client, folders):
    r = client.post("/embed_sparse", json={"inputs": "hello world", "model": str(folders["mlm"])})
    assert r.status_code == 200, r.text
    assert r.json()[0] and all(term["value"] > 0 for term in r.json()[0])


def test_a_folder_that_is_no_servable_model_is_refused_at_load(folders, tmp_path):
    with pytest.raises(RuntimeError) as raised:
        start_server(tmp_path, "--model", str(folders["tagger"]), timeout=120)
    assert "BertForTokenClassification" in str(raised.value) and "does not serve it" in str(raised.value)

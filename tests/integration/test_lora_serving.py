"""LoRA adapter folders served as models: side by side on one base, and on the fast backends.

Adapters are made as a LoRA fine-tuning job makes them (sentence-transformers' `add_adapter`,
then `save`), on a tiny BERT, with their LoRA weights set to seeded random values: a freshly
initialised adapter changes nothing, and the checks below must see a model that differs from its
base. Each served vector is compared with `SentenceTransformer(<adapter folder>).encode` (the
base with the adapter applied), which is what a user of the adapter expects.
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.backends.torch_backend import TorchBackend
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_models import build_bert_model

pytestmark = pytest.mark.integration

TEXTS = ["the quick brown fox", "a lazy dog sleeps", "hello world", "red car on the road", "the fox"]


def make_adapter(base: Path, folder: Path, seed: int) -> Path:
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer

    from embedserve.training import peft_compat

    peft_compat.ensure()
    model = SentenceTransformer(str(base), device="cpu")
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, lora_alpha=8,
                                 target_modules=["query", "value"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save(str(folder))
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = build_bert_model(root / "acme--base", max_position_embeddings=64, max_seq_length=32, seed=7)
    return {"base": base, "one": make_adapter(base, root / "acme--one", 1), "two": make_adapter(base, root / "acme--two", 2),
            "three": make_adapter(base, root / "acme--three", 3), "root": root}


def expected(folder: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(TEXTS, normalize_embeddings=True)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def serve(models, *names, cache: str = "cache", **options) -> TestClient:
    settings = Settings(models=tuple(str(models[n]) for n in names), device="cpu", threads=1, load_on_demand=False,
                        cache_dir=models["root"] / cache, **options)
    return TestClient(create_app(settings))


def embed(client, folder) -> np.ndarray:
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": str(folder)})
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def described(client) -> dict[str, dict]:
    return {m["model_name"]: m for m in client.get("/model/info").json()["loaded_models"]}


def test_two_adapters_and_their_base_are_served_at_once_sharing_the_base_weights(models):
    with serve(models, "base", "one", "two", backend="torch", dtype="fp32") as client:
        wait_ready(client, timeout=120)
        for name in ("base", "one", "two"):
            assert cosines(embed(client, models[name]), expected(models[name])).min() >= 0.9999, name
        # the adapters are not their base: a test that served the base for both would fail here
        assert cosines(expected(models["one"]), expected(models["base"])).min() < 0.99
        assert cosines(expected(models["one"]), expected(models["two"])).min() < 0.99
        info = described(client)
    base, one, two = (info[str(models[n])] for n in ("base", "one", "two"))
    # loaded first, it is the copy the others point at (only tensors that happen to equal another loaded
    # model's, such as freshly initialised LayerNorms of other tiny test models, can be shared already)
    assert base["shared_weights_bytes"] < base["weights_bytes"] // 10
    for adapter in (one, two):
        lora_bytes = adapter["weights_bytes"] - base["weights_bytes"]
        assert 0 < lora_bytes < base["weights_bytes"] // 10  # the adapter's own weights are small...
        # ...and every weight of the base is held once (the pooler too: the tiny BERT keeps it)
        assert adapter["shared_weights_bytes"] == base["weights_bytes"]


def test_an_adapter_loaded_after_the_first_holder_is_gone_still_shares(models):
    first = TorchBackend(models["one"], device="cpu", threads=1)
    second = TorchBackend(models["two"], device="cpu", threads=1)
    assert second.info.shared_weights_bytes > 0
    del first
    gc.collect()
    third = TorchBackend(models["three"], device="cpu", threads=1)
    assert third.info.shared_weights_bytes == second.info.shared_weights_bytes
    batch_texts = TEXTS
    from embedserve.backends.base import Batch

    batch = Batch.from_ids(third.tokenize(batch_texts, truncate=True), third.pad_id)
    assert cosines(third.embed(batch), expected(models["three"])).min() >= 0.9999


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_an_adapter_is_merged_into_the_onnx_graph(models, dtype):
    with serve(models, "base", "one", cache=f"cache-{dtype}", backend="onnx", dtype=dtype, min_fidelity=0.9) as client:
        wait_ready(client, timeout=300)
        got = embed(client, models["one"])
        info = described(client)[str(models["one"])]
    assert info["backend"] == "onnx" and info["dtype"] == dtype
    bound = 0.9999 if dtype == "fp32" else 0.99
    assert cosines(got, expected(models["one"])).min() >= bound
    assert cosines(expected(models["one"]), expected(models["base"])).min() < 0.99
    # merged: the adapter's graph is the base's graph, operator for operator (unmerged, each adapted
    # Linear would add two MatMuls, a Mul and an Add)
    graphs = [Counter(node.op_type for node in onnx.load(str(entry / "model.onnx")).graph.node)
              for entry in (models["root"] / f"cache-{dtype}" / "onnx").iterdir()]
    assert len(graphs) == 2 and graphs[0] == graphs[1], graphs

"""corpus/encoder.py on a tiny BERT: the server's pipeline, independent of how inputs are batched."""

import numpy as np
import pytest

from embedserve.corpus.encoder import CorpusEncoder, CorpusModelError
from embedserve.settings import Settings
from tests.support.tiny_models import build_generic

TEXTS = ["a", "the quick brown fox", "", "cold rain and snow " * 20, "hello world", "the cat and the dog again"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_generic(root, normalize=True, prompts={"query": "query: ", "document": "passage: "})


def settings(tmp_path, **overrides) -> Settings:
    return Settings(backend="torch", dtype="fp32", device="cpu", cache_dir=tmp_path, torch_compile="off", **overrides)


def test_vectors_do_not_depend_on_batching(folder, tmp_path):
    together = CorpusEncoder(settings(tmp_path), str(folder))
    alone = CorpusEncoder(settings(tmp_path, max_batch_size=1, model_workers=1), str(folder))
    a = together.encode(TEXTS).dense
    b = np.vstack([alone.encode([t]).dense for t in TEXTS])
    assert a.shape == (len(TEXTS), together.dimension) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-6
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)  # the model's Normalize module
    assert together.mode == "torch fp32" and len(together.encode([])) == 0


def test_input_type_picks_the_models_prefix(folder, tmp_path):
    plain = CorpusEncoder(settings(tmp_path), str(folder))
    query = CorpusEncoder(settings(tmp_path), str(folder), input_type="query")
    assert query.prefix == "query: " and plain.prefix == ""
    assert np.abs(query.encode(["hello world"]).dense - plain.encode(["query: hello world"]).dense).max() <= 1e-6


def test_an_output_the_model_lacks_is_refused(folder, tmp_path):
    with pytest.raises(CorpusModelError, match="gives embed, not sparse"):
        CorpusEncoder(settings(tmp_path), str(folder), outputs=("sparse",))
    with pytest.raises(CorpusModelError, match="--outputs takes"):
        CorpusEncoder(settings(tmp_path), str(folder), outputs=("colbert",))

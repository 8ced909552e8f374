"""sentence-transformers' `do_lower_case` (a tiny case-sensitive XLM-R folder saying true): the torch
backend's ids and vectors are sentence-transformers' own (its loaded tokenizer lowercases), and a
front-end's tokenizer-only backend, which loads the tokenizer files alone, lowercases the texts itself
and makes the same ids (it made other ids before)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedserve.backends.tokenizer_only import TokenizerOnlyBackend
from embedserve.backends.torch_backend import TorchBackend
from tests.support.tiny_models import build_xlm_roberta_model

TEXTS = ["Query About Cats", "the SAME words", "lower case already"]


@pytest.fixture(scope="module")
def lowercasing(tmp_path_factory):
    folder = build_xlm_roberta_model(tmp_path_factory.mktemp("lc") / "acme--lower")
    config = folder / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_lower_case": True}))
    return folder


def test_a_lower_casing_model_tokenizes_and_embeds_as_sentence_transformers(lowercasing):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(lowercasing), device="cpu")
    assert reference[0].do_lower_case
    backend = TorchBackend(lowercasing, device="cpu")
    ids = backend.tokenize(TEXTS, truncate=True)
    assert ids == [reference.tokenize([t])["input_ids"][0].tolist() for t in TEXTS]

    want = reference.encode(TEXTS, convert_to_numpy=True)
    from embedserve.backends.base import Batch
    from embedserve.models.tasks import Task

    got = backend.encode(Batch.from_ids(ids, backend.pad_id), frozenset({Task.EMBED})).dense
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-5)
    front_end = TokenizerOnlyBackend(lowercasing, backend.info)  # the model's files, without its weights
    assert front_end.tokenize(TEXTS, truncate=True) == ids
    front_end._tokenizer.lowercase = False  # its tokenizer alone is case-sensitive: other ids without it
    assert front_end.tokenize(TEXTS[:1], truncate=True)[0] != ids[0]

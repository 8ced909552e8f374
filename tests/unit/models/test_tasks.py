"""What a folder is (models/tasks.py), read from its files alone: every rule, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedserve.errors import ModelLoadError
from embedserve.models.tasks import Task, detect_kind

EMBED, SPARSE, MULTI, SCORE = Task.EMBED, Task.SPARSE, Task.MULTIVECTOR, Task.SCORE


def folder(tmp_path: Path, **files: object) -> Path:
    """A folder holding the given files: JSON for dicts, a few bytes for anything else."""
    for name, content in files.items():
        path = tmp_path / name.replace("__", ".")
        path.write_text(json.dumps(content) if isinstance(content, dict) else "x")
    return tmp_path


BERT = {"architectures": ["BertModel"], "model_type": "bert"}


@pytest.mark.parametrize(
    "files, kind, tasks",
    [
        ({"modules__json": {}, "config__json": BERT}, "sentence-transformer", {EMBED}),  # an older ST save
        ({"config_sentence_transformers__json": {"model_type": "SentenceTransformer"}}, "sentence-transformer", {EMBED}),
        ({"config_sentence_transformers__json": {"model_type": "SparseEncoder"}}, "splade", {SPARSE}),
        ({"config_sentence_transformers__json": {"model_type": "MultiVectorEncoder"}}, "multi-vector", {MULTI}),
        ({"config_sentence_transformers__json": {"model_type": "CrossEncoder"}}, "cross-encoder", {SCORE}),
        ({"modules__json": {}, "sparse_linear__pt": b"", "colbert_linear__pt": b""}, "bge-m3", {EMBED, SPARSE, MULTI}),
        ({"modules__json": {}, "sparse_linear__pt": b""}, "bge-m3", {EMBED, SPARSE}),
        ({"config__json": {"architectures": ["XLMRobertaModel"]}, "colbert_linear__pt": b""}, "bge-m3", {EMBED, MULTI}),
        ({"config__json": {"architectures": ["BertForMaskedLM"]}}, "splade", {SPARSE}),
        ({"config__json": {"architectures": ["XLMRobertaForSequenceClassification"]}}, "cross-encoder", {SCORE}),
        ({"config__json": BERT}, "sentence-transformer", {EMBED}),  # a bare encoder: mean pooling, as ST does
        ({"config__json": {"model_type": "bert"}}, "sentence-transformer", {EMBED}),  # no architectures listed
    ],
)
def test_each_rule(tmp_path, files, kind, tasks):
    found = detect_kind(folder(tmp_path, **files))
    assert (found.name, set(found.tasks)) == (kind, tasks)
    assert found.reason


def test_the_sentence_transformers_type_wins_over_the_architecture(tmp_path):
    found = detect_kind(folder(tmp_path, config_sentence_transformers__json={"model_type": "CrossEncoder"},
                               config__json={"architectures": ["BertForMaskedLM"]}))
    assert found.name == "cross-encoder"


@pytest.mark.parametrize(
    "files, words",
    [
        ({}, "no config.json and no sentence-transformers files"),
        ({"config__json": {"architectures": ["GPT2LMHeadModel"]}}, "GPT2LMHeadModel"),
        ({"config__json": {"architectures": ["BertForTokenClassification"]}}, "BertForTokenClassification"),
        ({"config_sentence_transformers__json": {"model_type": "SomethingNew"}}, "SomethingNew"),
    ],
)
def test_a_folder_that_is_none_of_these_is_refused_saying_what_it_is(tmp_path, files, words):
    with pytest.raises(ModelLoadError) as raised:
        detect_kind(folder(tmp_path, **files))
    assert words in raised.value.message

"""Model families: detection by name or architecture, prompt precedence, prefixes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedserve.models.families import (
    BGE_EN_V15,
    BGE_M3,
    E5,
    GENERIC,
    NOMIC,
    PromptProfile,
    declared_max_seq_length,
    detect_family,
    profile_for,
)

# What sentence-transformers 6 reports as `prompts` for a model that declares none.
ST6_DEFAULT_PROMPTS = {"query": "", "document": ""}
BGE_QUERY = "Represent this sentence for searching relevant passages: "


def model_folder(root: Path, name: str, config: object | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


# ---- the families themselves ------------------------------------------------------------


def test_family_definitions():
    assert (E5.query, E5.document, E5.max_seq_length) == ("query: ", "passage: ", 512)
    assert (BGE_M3.query, BGE_M3.document, BGE_M3.max_seq_length) == ("", "", 8192)
    assert (BGE_EN_V15.query, BGE_EN_V15.document, BGE_EN_V15.max_seq_length) == (BGE_QUERY, "", 512)
    assert (NOMIC.query, NOMIC.document, NOMIC.max_seq_length) == ("search_query: ", "search_document: ", 8192)
    assert (GENERIC.query, GENERIC.document, GENERIC.max_seq_length) == ("", "", None)


# ---- detect_family: by id --------------------------------------------------------------


@pytest.mark.parametrize(
    "model_id, family",
    [
        ("intfloat/e5-small-v2", E5),
        ("intfloat/e5-base-v2", E5),
        ("intfloat/e5-large", E5),
        ("intfloat/multilingual-e5-large", E5),
        ("intfloat/multilingual-e5-small", E5),
        ("multilingual-e5-base", E5),
        ("e5-small-v2", E5),
        ("INTFLOAT/E5-Small-V2", E5),
        ("BAAI/bge-m3", BGE_M3),
        ("bge-m3", BGE_M3),
        ("BAAI/BGE-M3", BGE_M3),
        ("BAAI/bge-small-en-v1.5", BGE_EN_V15),
        ("BAAI/bge-base-en-v1.5", BGE_EN_V15),
        ("bge-large-en-v1.5", BGE_EN_V15),
        ("nomic-ai/nomic-embed-text-v1.5", NOMIC),
        ("nomic-ai/nomic-embed-text-v1", NOMIC),
        ("Nomic-Embed-Text-v1.5", NOMIC),
    ],
)
def test_detect_family_by_id(model_id, family):
    assert detect_family(model_id) is family
    assert detect_family(model_id, None) is family


@pytest.mark.parametrize(
    "model_id",
    [
        "sentence-transformers/all-MiniLM-L6-v2",
        "all-mpnet-base-v2",
        "thenlper/gte-base",
        "BAAI/bge-small-en",  # v1, not v1.5: no rule for it
        "BAAI/bge-small-zh-v1.5",
        "acme/e50-encoder",  # "e5" only as a whole name part
        "acme/de5-encoder",
        "nomic-ai/nomic-bert-2048",
        "",
        "/",
        "some/deeply/nested/name",
        "ünïcödé-模型",
    ],
)
def test_unknown_models_are_generic_never_an_error(model_id):
    assert detect_family(model_id) is GENERIC


# ---- detect_family: by folder name ------------------------------------------------------


@pytest.mark.parametrize(
    "folder_name, family",
    [
        ("intfloat--e5-small-v2", E5),
        ("e5-tiny", E5),
        ("multilingual-e5-large", E5),
        ("BAAI--bge-m3", BGE_M3),
        ("bge-small-en-v1.5", BGE_EN_V15),
        ("nomic-ai--nomic-embed-text-v1.5", NOMIC),
    ],
)
def test_detect_family_by_folder_name_when_the_id_says_nothing(tmp_path, folder_name, family):
    folder = model_folder(tmp_path, folder_name, {"architectures": ["BertModel"]})
    assert detect_family("my-model", folder) is family


def test_the_id_is_enough_without_any_folder_or_config(tmp_path):
    missing = tmp_path / "not-there"
    assert detect_family("intfloat/e5-small-v2", missing) is E5
    assert detect_family("my-model", missing) is GENERIC


# ---- detect_family: by architecture -----------------------------------------------------


def test_detect_family_by_architecture(tmp_path):
    folder = model_folder(tmp_path, "my-encoder", {"architectures": ["NomicBertModel"], "model_type": "nomic_bert"})
    assert detect_family("acme/my-encoder", folder) is NOMIC


def test_architecture_is_only_consulted_with_a_path():
    assert detect_family("acme/my-encoder", None) is GENERIC


def test_name_rules_beat_the_architecture(tmp_path):
    folder = model_folder(tmp_path, "weights", {"architectures": ["NomicBertModel"]})
    assert detect_family("BAAI/bge-m3", folder) is BGE_M3


@pytest.mark.parametrize(
    "config",
    [
        {"architectures": ["BertModel"]},
        {"architectures": ["XLMRobertaModel", "SomethingElse"]},
        {"architectures": []},
        {},
    ],
)
def test_unknown_architecture_is_generic(tmp_path, config):
    folder = model_folder(tmp_path, "plain", config)
    assert detect_family("acme/plain", folder) is GENERIC


@pytest.mark.parametrize("content", ["", "{not json", "\x00\xff"])
def test_unreadable_config_is_generic_not_an_error(tmp_path, content):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    assert detect_family("acme/broken", folder) is GENERIC


@pytest.mark.parametrize("content", ['{"architectures": null}', '["BertModel"]', "null"])
def test_config_with_null_architectures_or_non_object_is_generic(tmp_path, content):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    assert detect_family("acme/odd", folder) is GENERIC


def test_a_family_name_in_a_parent_folder_does_not_make_the_model_that_family(tmp_path):
    folder = model_folder(tmp_path / "e5-models", "all-MiniLM-L6-v2", {"architectures": ["BertModel"]})
    assert detect_family(str(folder), folder) is GENERIC


@pytest.mark.parametrize("model_id", ["intfloat/multilingual-e5-large-instruct", "intfloat/e5-mistral-7b-instruct"])
def test_instruct_e5_models_do_not_get_the_plain_e5_prefixes(model_id):
    profile = profile_for(model_id, None, dict(ST6_DEFAULT_PROMPTS), None)
    assert profile.document == ""
    assert profile.query != "query: "


# ---- profile_for: precedence ------------------------------------------------------------


@pytest.mark.parametrize("prompts", [{}, dict(ST6_DEFAULT_PROMPTS), {"query": "", "document": "", "passage": ""}])
def test_empty_model_prompts_fall_through_to_the_family(prompts):
    profile = profile_for("intfloat/e5-small-v2", None, prompts, None)
    assert profile == PromptProfile("e5", "query: ", "passage: ", "", "family", 512)


def test_st6_default_prompts_fall_through_for_every_family():
    expected = {
        "intfloat/multilingual-e5-large": ("query: ", "passage: ", "family", 512),
        "nomic-ai/nomic-embed-text-v1.5": ("search_query: ", "search_document: ", "family", 8192),
        "BAAI/bge-small-en-v1.5": (BGE_QUERY, "", "family", 512),
        "BAAI/bge-m3": ("", "", "none", 8192),
        "sentence-transformers/all-MiniLM-L6-v2": ("", "", "none", None),
    }
    for model_id, (query, document, source, max_len) in expected.items():
        profile = profile_for(model_id, None, dict(ST6_DEFAULT_PROMPTS), None)
        assert (profile.query, profile.document, profile.source, profile.max_seq_length) == (
            query,
            document,
            source,
            max_len,
        ), model_id
        assert profile.default == ""


def test_model_own_prompts_beat_the_family():
    own = {"query": "Q> ", "document": "D> "}
    profile = profile_for("intfloat/e5-small-v2", None, own, None)
    assert (profile.query, profile.document, profile.source) == ("Q> ", "D> ", "model config")
    assert profile.family == "e5" and profile.max_seq_length == 512  # the family still sets the length


def test_model_own_query_prompt_alone_wins_and_documents_get_no_prefix():
    # e.g. a BGE-style model that declares only a query instruction
    profile = profile_for("intfloat/e5-small-v2", None, {"query": "Find: ", "document": ""}, None)
    assert (profile.query, profile.document, profile.source) == ("Find: ", "", "model config")


@pytest.mark.parametrize(
    "prompts, query, document",
    [
        ({"query": "query: ", "passage": "passage: "}, "query: ", "passage: "),  # older E5 configs
        ({"search_query": "search_query: ", "search_document": "search_document: "}, "search_query: ", "search_document: "),
        (
            {"query": "", "document": "", "search_query": "sq: ", "search_document": "sd: ", "clustering": "c: "},
            "sq: ",
            "sd: ",
        ),
        ({"query": "q: ", "document": "d: ", "passage": "p: "}, "q: ", "d: "),  # 'document' before 'passage'
    ],
)
def test_own_prompt_key_spellings(prompts, query, document):
    profile = profile_for("acme/encoder", None, prompts, None)
    assert (profile.query, profile.document, profile.source) == (query, document, "model config")
    assert profile.family == "generic"


def test_prompts_under_other_names_only_fall_through_to_the_family():
    prompts = {"query": "", "document": "", "classification": "classification: ", "clustering": "clustering: "}
    profile = profile_for("nomic-ai/nomic-embed-text-v1.5", None, prompts, None)
    assert (profile.query, profile.document, profile.source) == ("search_query: ", "search_document: ", "family")


def test_default_prompt_name_sets_the_prefix_when_no_input_type_is_given():
    prompts = {"query": "q: ", "document": "", "classification": "cls: "}
    profile = profile_for("acme/encoder", None, prompts, "classification")
    assert profile.source == "model config"
    assert profile.prefix(None) == "cls: "
    assert profile.prefix("query") == "q: "
    assert profile.prefix("document") == ""


def test_a_default_prompt_alone_counts_as_the_model_own():
    profile = profile_for("intfloat/e5-small-v2", None, {"query": "", "document": "", "sts": "sts: "}, "sts")
    assert profile.source == "model config"
    assert (profile.query, profile.document, profile.default) == ("", "", "sts: ")


def test_unknown_default_prompt_name_is_no_prefix_not_an_error():
    profile = profile_for("acme/encoder", None, dict(ST6_DEFAULT_PROMPTS), "missing")
    assert profile.default == "" and profile.source == "none"


def test_generic_model_without_prompts_has_no_prefix():
    profile = profile_for("acme/encoder", None, dict(ST6_DEFAULT_PROMPTS), None)
    assert profile == PromptProfile("generic", "", "", "", "none", None)
    assert profile.prefix("query") == profile.prefix("document") == profile.prefix(None) == ""


def test_family_detected_from_the_folder_feeds_the_profile(tmp_path):
    folder = model_folder(tmp_path, "nomic-ai--nomic-embed-text-v1.5", {"architectures": ["NomicBertModel"]})
    profile = profile_for("local-model", folder, dict(ST6_DEFAULT_PROMPTS), None)
    assert (profile.family, profile.query, profile.document) == ("nomic-embed", "search_query: ", "search_document: ")


def test_profile_for_does_not_change_the_prompts_it_is_given():
    prompts = dict(ST6_DEFAULT_PROMPTS)
    profile_for("intfloat/e5-small-v2", None, prompts, None)
    assert prompts == ST6_DEFAULT_PROMPTS


# ---- PromptProfile.prefix ---------------------------------------------------------------


def test_prompt_profile_prefix():
    profile = PromptProfile("e5", "query: ", "passage: ", "", "family", 512)
    assert profile.prefix("query") == "query: "
    assert profile.prefix("document") == "passage: "
    assert profile.prefix(None) == ""


def test_prompt_profile_prefix_default_only_for_none():
    profile = PromptProfile("generic", "q: ", "d: ", "dflt: ", "model config")
    assert [profile.prefix(t) for t in ("query", "document", None)] == ["q: ", "d: ", "dflt: "]


# ---- declared_max_seq_length ------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"max_seq_length": 256, "do_lower_case": False}, 256),
        ({"do_lower_case": False}, None),
        ({"max_seq_length": None}, None),
        ({"max_seq_length": "512"}, None),
        (None, None),  # no file
    ],
)
def test_declared_max_seq_length(tmp_path, content, expected):
    if content is not None:
        (tmp_path / "sentence_bert_config.json").write_text(json.dumps(content))
    assert declared_max_seq_length(tmp_path) == expected


def test_declared_max_seq_length_without_a_path():
    assert declared_max_seq_length(None) is None


def test_declared_max_seq_length_unreadable_file(tmp_path):
    (tmp_path / "sentence_bert_config.json").write_text("{oops")
    assert declared_max_seq_length(tmp_path) is None

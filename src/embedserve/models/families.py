"""Model families configure themselves: prompts (query/document prefixes) and length limits.

The model's own sentence-transformers config wins (`prompts`, `default_prompt_name`,
`max_seq_length`); known families fill in what it leaves out, recognised by name or by the
architecture in config.json. An unknown model simply gets no prefix.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

InputType = Literal["query", "document"]


@dataclass(frozen=True)
class Family:
    name: str
    query: str = ""
    document: str = ""
    max_seq_length: int | None = None


GENERIC = Family("generic")
E5 = Family("e5", query="query: ", document="passage: ", max_seq_length=512)
BGE_M3 = Family("bge-m3", max_seq_length=8192)
BGE_EN_V15 = Family(
    "bge-en-v1.5", query="Represent this sentence for searching relevant passages: ", max_seq_length=512
)
# Instruction-tuned E5: queries carry a task instruction, documents nothing (model cards).
E5_INSTRUCT = Family(
    "e5-instruct",
    query="Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ",
    max_seq_length=512,
)
NOMIC = Family("nomic-embed", query="search_query: ", document="search_document: ", max_seq_length=8192)

# Matched against the model id and the folder name, lower-cased. Order matters: most specific first.
_NAME_RULES: tuple[tuple[re.Pattern, Family], ...] = (
    (re.compile(r"bge-m3"), BGE_M3),
    (re.compile(r"bge-(small|base|large)-en-v1\.5"), BGE_EN_V15),
    (re.compile(r"nomic-embed"), NOMIC),
    (re.compile(r"(^|[_-])e5-.*instruct"), E5_INSTRUCT),
    (re.compile(r"(^|[_-])(multilingual-)?e5(-|$)"), E5),
)
_ARCHITECTURE_RULES: dict[str, Family] = {"NomicBertModel": NOMIC}


@dataclass(frozen=True)
class PromptProfile:
    """Prefixes in use for one loaded model, and where they came from."""

    family: str
    query: str
    document: str
    default: str
    source: str  # "model config" | "family" | "none"
    max_seq_length: int | None = None

    def prefix(self, input_type: InputType | None) -> str:
        if input_type == "query":
            return self.query
        if input_type == "document":
            return self.document
        return self.default


def detect_family(model_id: str, path: Path | None = None) -> Family:
    """By the model's own name (last part of its id, or its folder), then by architecture.

    Only the last path component counts: a family name in a parent folder
    (/srv/e5-models/all-MiniLM-L6-v2) says nothing about the model in it.
    """
    names = [model_id.rstrip("/").split("/")[-1].lower()]
    if path is not None:
        names.append(path.name.lower())
    for pattern, family in _NAME_RULES:
        if any(pattern.search(name) for name in names):
            return family
    architectures = read_json(path / "config.json").get("architectures") if path else None
    for arch in architectures if isinstance(architectures, list) else []:
        if isinstance(arch, str) and arch in _ARCHITECTURE_RULES:
            return _ARCHITECTURE_RULES[arch]
    return GENERIC


def profile_for(
    model_id: str, path: Path | None, prompts: dict[str, str], default_prompt_name: str | None
) -> PromptProfile:
    """Prefixes for a model: its own non-empty `prompts` first, then its family's."""
    family = detect_family(model_id, path)
    own_query = prompts.get("query") or prompts.get("search_query") or ""
    own_document = prompts.get("document") or prompts.get("passage") or prompts.get("search_document") or ""
    default = prompts.get(default_prompt_name, "") if default_prompt_name else ""
    if own_query or own_document or default:
        return PromptProfile(family.name, own_query, own_document, default, "model config", family.max_seq_length)
    if family.query or family.document:
        return PromptProfile(family.name, family.query, family.document, "", "family", family.max_seq_length)
    return PromptProfile(family.name, "", "", "", "none", family.max_seq_length)


def declared_max_seq_length(path: Path | None) -> int | None:
    """max_seq_length from the model's sentence_bert_config.json, if it declares one."""
    if path is None:
        return None
    value = read_json(path / "sentence_bert_config.json").get("max_seq_length")
    return int(value) if isinstance(value, int) else None


def read_json(file: Path) -> dict:
    """A JSON object from a model folder's file; {} when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}

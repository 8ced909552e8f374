"""What a model folder can do, read from the folder itself before any weights are loaded.

Tasks: `embed` (one dense vector per input), `sparse` (a weight per vocabulary term),
`multivector` (one vector per token, ColBERT-style) and `score` (a cross-encoder scoring text
pairs). A folder says what it is in one of three ways, first match wins:

1. sentence-transformers' own `config_sentence_transformers.json` `model_type`
   (SentenceTransformer, SparseEncoder, MultiVectorEncoder, CrossEncoder), or a `modules.json`
   without it (older SentenceTransformer saves);
2. BGE-M3's head files beside the encoder (`sparse_linear.pt`, `colbert_linear.pt`): dense +
   sparse + ColBERT from one forward pass, as FlagEmbedding computes them;
3. `config.json` `architectures`: `...ForMaskedLM` is a SPLADE model (what sentence-transformers'
   SparseEncoder makes of it: MLM logits, log1p(relu), max over tokens); `...ForSequenceClassification`
   is a cross-encoder; a bare encoder (`BertModel`, `XLMRobertaModel`, ...) is an embedder with
   mean pooling (what SentenceTransformer makes of it).

Anything else (a causal LM, a token classifier, no config at all) is refused at load with a
message that says what was found: it is never served as something it is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from embedserve.errors import ModelLoadError
from embedserve.models.families import read_json


class Task(StrEnum):
    EMBED = "embed"
    SPARSE = "sparse"
    MULTIVECTOR = "multivector"
    SCORE = "score"


# The tasks that are outputs of one forward pass over one text (score reads a pair).
OUTPUTS = (Task.EMBED, Task.SPARSE, Task.MULTIVECTOR)

BGE_M3_HEADS = ("sparse_linear.pt", "colbert_linear.pt")


def task_names(tasks: frozenset[Task]) -> list[str]:
    """The tasks' names in Task's order (embed, sparse, multivector, score), as clients see them."""
    return [task.value for task in Task if task in tasks]


@dataclass(frozen=True)
class ModelKind:
    """What a folder is: `name` says how it is computed, `loader` which sentence-transformers class reads it."""

    name: str  # "sentence-transformer" | "bge-m3" | "splade" | "multi-vector" | "cross-encoder"
    tasks: frozenset[Task]
    loader: str  # "SentenceTransformer" | "SparseEncoder" | "MultiVectorEncoder" | "CrossEncoder"
    reason: str  # what in the folder decided it (logged, shown in /model/info)



SENTENCE_TRANSFORMER = "SentenceTransformer"
_ST_TYPES = {
    "SentenceTransformer": ("sentence-transformer", {Task.EMBED}),
    "SparseEncoder": ("splade", {Task.SPARSE}),
    "MultiVectorEncoder": ("multi-vector", {Task.MULTIVECTOR}),
    "CrossEncoder": ("cross-encoder", {Task.SCORE}),
}


def detect_kind(path: Path) -> ModelKind:
    """The kind of the model in `path` (a folder), or ModelLoadError saying why it is none."""
    st_type = read_json(path / "config_sentence_transformers.json").get("model_type")
    if st_type is None and (path / "modules.json").is_file():
        st_type = SENTENCE_TRANSFORMER  # saved before sentence-transformers wrote model_type
    heads = [name for name in BGE_M3_HEADS if (path / name).is_file()]
    if st_type in (None, SENTENCE_TRANSFORMER) and heads:
        tasks = {Task.EMBED}
        if "sparse_linear.pt" in heads:
            tasks.add(Task.SPARSE)
        if "colbert_linear.pt" in heads:
            tasks.add(Task.MULTIVECTOR)
        return ModelKind("bge-m3", frozenset(tasks), SENTENCE_TRANSFORMER, f"head files {', '.join(heads)}")
    if isinstance(st_type, str):
        if st_type not in _ST_TYPES:
            raise ModelLoadError(
                f"the model is a sentence-transformers {st_type}, which embedserve does not serve "
                f"(it serves {', '.join(_ST_TYPES)})"
            )
        name, tasks = _ST_TYPES[st_type]
        return ModelKind(name, frozenset(tasks), st_type, f"sentence-transformers model_type {st_type}")
    config = read_json(path / "config.json")
    if not config:
        raise ModelLoadError("the folder has no config.json and no sentence-transformers files: it is not a model")
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    for arch in architectures:
        if arch.endswith("ForMaskedLM"):
            return ModelKind("splade", frozenset({Task.SPARSE}), "SparseEncoder", f"architecture {arch} (SPLADE)")
        if arch.endswith("ForSequenceClassification"):
            return ModelKind("cross-encoder", frozenset({Task.SCORE}), "CrossEncoder", f"architecture {arch}")
    if not architectures or any(_bare(arch) for arch in architectures):
        found = architectures[0] if architectures else f"model_type {config.get('model_type', '?')}"
        return ModelKind("sentence-transformer", frozenset({Task.EMBED}), SENTENCE_TRANSFORMER, f"bare encoder {found}")
    raise ModelLoadError(
        f"the model's architecture is {', '.join(architectures)}: not an embedding, sparse (…ForMaskedLM), "
        "multi-vector or cross-encoder (…ForSequenceClassification) model, so embedserve does not serve it"
    )


def _bare(architecture: str) -> bool:
    """A transformers base model (`BertModel`), not one with a task head (`...ForX`, `...LMHeadModel`)."""
    return architecture.endswith("Model") and "For" not in architecture and "LMHead" not in architecture

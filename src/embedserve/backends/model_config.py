"""What a loaded model's own configuration says: usable positions, pooling, labels, MaxSim flavour."""

from __future__ import annotations

import torch

from embedserve.models.tasks import ModelKind, Task

# Position ids of these architectures start after the padding index, so the first
# padding_idx + 1 positions can never hold a token (RoBERTa, XLM-R: 514 positions, 512 tokens).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer",
                           "data2vec-text", "ibert", "markuplm"}


def usable_positions(config) -> int:
    positions = getattr(config, "max_position_embeddings", None) or 512
    if getattr(config, "model_type", None) in _OFFSET_POSITION_MODELS:
        positions -= (getattr(config, "pad_token_id", None) or 1) + 1
    return positions


def pooling_name(module: torch.nn.Module) -> str:
    mode = getattr(module, "pooling_mode", None)
    if isinstance(mode, str):
        return mode
    if isinstance(mode, (tuple, list)):
        return "+".join(mode)
    return type(module).__name__.lower()


def multivector_similarity(kind: ModelKind, st) -> str | None:
    """How the model scores a query's vectors against a document's: BGE-M3 averages the best
    matches (FlagEmbedding's colbert_score); a MultiVectorEncoder says which in its config."""
    if Task.MULTIVECTOR not in kind.tasks:
        return None
    if kind.name == "bge-m3":
        return "meanmaxsim"
    return str(getattr(st, "similarity_fn_name", None) or "maxsim")


def label_names(config) -> tuple[str, ...]:
    """A classifier's label names in id order, from its config's id2label (transformers fills
    `LABEL_i` for any it doesn't name)."""
    names = getattr(config, "id2label", None) or {}
    return tuple(str(names.get(i, names.get(str(i), f"LABEL_{i}"))) for i in range(int(config.num_labels)))

"""Did training help? MRR@10 and recall@1 of retrieving each query's passage.

Every query of the held-out split is scored against all distinct passages of that split (cosine
of normalised embeddings); its own passage is the one relevant document. This is the measure
the Embedding Service's users care about (find the right passage for a question) and needs no
labels beyond the pairs themselves. Ties are broken against the relevant passage (rank counts
every passage scoring at least as high), so a model that embeds everything alike scores low
rather than by luck.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedserve.training.data import Pair

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["retrieval_metrics", "ranks", "evaluate_model"]


def ranks(queries: np.ndarray, passages: np.ndarray, relevant: Sequence[int]) -> np.ndarray:
    """1-based rank of each query's relevant passage (rows need not be normalised)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    p = passages / np.maximum(np.linalg.norm(passages, axis=1, keepdims=True), 1e-12)
    scores = q @ p.T
    rel = np.asarray(relevant)
    own = scores[np.arange(len(rel)), rel]
    # Count, per query, the passages scoring >= its own (its own included): ties rank pessimistically.
    return (scores >= own[:, None] - 1e-7).sum(axis=1)


def retrieval_metrics(queries: np.ndarray, passages: np.ndarray, relevant: Sequence[int]) -> dict[str, float]:
    r = ranks(queries, passages, relevant)
    if len(r) == 0:
        return {"mrr@10": 0.0, "recall@1": 0.0}
    rr = np.where(r <= 10, 1.0 / r, 0.0)
    return {"mrr@10": float(rr.mean()), "recall@1": float((r == 1).mean())}


def evaluate_model(model: SentenceTransformer, pairs: Sequence[Pair], batch_size: int = 64) -> dict[str, float]:
    """Metrics of `model` on `pairs`. Duplicate passages are one document, so two queries sharing a
    passage both count it as relevant."""
    passages: list[str] = []
    index: dict[str, int] = {}
    relevant = []
    for pair in pairs:
        if pair.positive not in index:
            index[pair.positive] = len(passages)
            passages.append(pair.positive)
        relevant.append(index[pair.positive])
    queries = model.encode([p.anchor for p in pairs], batch_size=batch_size, convert_to_numpy=True)
    docs = model.encode(passages, batch_size=batch_size, convert_to_numpy=True)
    return retrieval_metrics(np.asarray(queries, dtype=np.float32), np.asarray(docs, dtype=np.float32), relevant)

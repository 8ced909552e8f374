"""Similarity scores between outputs, as BGE-M3 (FlagEmbedding's M3Embedder) computes them.

Plain functions on the service's outputs, for rerank and hybrid search:
- dense: the dot product of the two (normalised) vectors;
- sparse (lexical matching): the sum, over the term ids both share, of the products of weights;
- ColBERT (MaxSim / query length): for each query vector its best dot product with any
  document vector, averaged over the query vectors;
- combined: the weighted sum of the three divided by the sum of the weights (`weights` =
  dense, sparse, ColBERT; --hybrid-weights, default 0.4 / 0.2 / 0.4 as BGE-M3's model card).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedserve.backends.base import SparseVector

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)


def dense_score(query: np.ndarray, document: np.ndarray) -> float:
    return float(np.dot(query, document))


def lexical_score(query: SparseVector, document: SparseVector) -> float:
    _, in_query, in_document = np.intersect1d(query.indices, document.indices, assume_unique=True, return_indices=True)
    return float(np.dot(query.values[in_query].astype(np.float64), document.values[in_document]))


def maxsim(query: np.ndarray, document: np.ndarray, *, mean: bool) -> float:
    """Each query vector's best dot product with a document vector, summed (ColBERT's MaxSim) or
    averaged over the query vectors (`mean`: BGE-M3's colbert_score); 0 when either has no vectors."""
    if query.shape[0] == 0 or document.shape[0] == 0:
        return 0.0
    best = (query @ document.T).max(axis=1)
    return float(best.mean() if mean else best.sum())


@dataclass(frozen=True)
class HybridScores:
    dense: float
    sparse: float
    colbert: float
    weights: tuple[float, float, float]

    @property
    def sparse_dense(self) -> float:
        w_dense, w_sparse, _ = self.weights
        return (self.dense * w_dense + self.sparse * w_sparse) / (w_dense + w_sparse)

    @property
    def combined(self) -> float:
        w_dense, w_sparse, w_colbert = self.weights
        return (self.dense * w_dense + self.sparse * w_sparse + self.colbert * w_colbert) / sum(self.weights)


def hybrid_scores(
    query: tuple[np.ndarray, SparseVector, np.ndarray],
    document: tuple[np.ndarray, SparseVector, np.ndarray],
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> HybridScores:
    """All three scores of a (dense, sparse, ColBERT) query against a document, and their combinations."""
    (q_dense, q_sparse, q_colbert), (d_dense, d_sparse, d_colbert) = query, document
    return HybridScores(
        dense_score(q_dense, d_dense),
        lexical_score(q_sparse, d_sparse),
        maxsim(q_colbert, d_colbert, mean=True),
        (float(weights[0]), float(weights[1]), float(weights[2])),
    )

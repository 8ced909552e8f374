"""Per-task heads: small computations that turn a batch's token states into outputs.

They run on float32 numpy token states `[batch, length, hidden]`, whichever backend (torch,
ONNX Runtime) computed them, so one head serves every backend and is usable outside the
engine (bulk embedding, training evaluation).

BGE-M3 (FlagEmbedding's M3Embedder, see ../shared/reference/peer-apis.md §1): beside its
encoder the model ships two linear layers, `sparse_linear.pt` (hidden -> 1) and
`colbert_linear.pt` (hidden -> colbert dim).
- sparse: relu(sparse_linear(h)) for every token; per token id the largest weight; CLS, EOS,
  PAD and UNK ids and weights <= 0 dropped.
- ColBERT: colbert_linear(h) for every real token but the first (CLS), each vector
  L2-normalised. The final EOS is kept, as FlagEmbedding keeps it.
(Dense is CLS, normalised: the model's own sentence-transformers Pooling + Normalize.)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from embedserve.backends.base import Batch, SparseVector
from embedserve.errors import ModelLoadError


def _load_linear(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(weight.T, bias) of a saved torch.nn.Linear state dict, read without unpickling code."""
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        weight = state["weight"].float().numpy()
        bias = state["bias"].float().numpy() if "bias" in state else np.zeros(weight.shape[0], np.float32)
    except Exception as exc:  # noqa: BLE001 - any unreadable head is a load error
        raise ModelLoadError(f"could not read the head {file.name}: {exc}") from exc
    return np.ascontiguousarray(weight.T), bias


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their norm (at least 1e-12, as torch.nn.functional.normalize)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def max_per_id(ids: np.ndarray, weights: np.ndarray, dropped: np.ndarray) -> SparseVector:
    """The largest weight of each token id, without the `dropped` ids and weights <= 0."""
    order = np.argsort(ids, kind="stable")
    ids, weights = ids[order], weights[order]
    unique, starts = np.unique(ids, return_index=True)
    if unique.size == 0:
        return SparseVector(np.empty(0, np.int64), np.empty(0, np.float32))
    best = np.maximum.reduceat(weights, starts)
    keep = (best > 0) & ~np.isin(unique, dropped)
    return SparseVector(unique[keep].astype(np.int64), best[keep].astype(np.float32))


class BgeM3Heads:
    """BGE-M3's sparse and ColBERT heads, read from the model folder."""

    def __init__(self, folder: Path, special_ids: Iterable[int | None]):
        self.sparse_head = _load_linear(folder / "sparse_linear.pt") if (folder / "sparse_linear.pt").is_file() else None
        self.colbert_head = (
            _load_linear(folder / "colbert_linear.pt") if (folder / "colbert_linear.pt").is_file() else None
        )
        self.dropped = np.array(sorted({i for i in special_ids if i is not None}), dtype=np.int64)

    @property
    def colbert_dimension(self) -> int | None:
        return None if self.colbert_head is None else int(self.colbert_head[0].shape[1])

    def check_hidden_size(self, hidden: int) -> None:
        for name, head in (("sparse_linear.pt", self.sparse_head), ("colbert_linear.pt", self.colbert_head)):
            if head is not None and head[0].shape[0] != hidden:
                raise ModelLoadError(f"{name} takes {head[0].shape[0]} inputs but the encoder's hidden size is {hidden}")

    def sparse(self, batch: Batch, states: np.ndarray) -> list[SparseVector]:
        assert self.sparse_head is not None
        weight, bias = self.sparse_head
        token_weights = np.maximum(states @ weight + bias, 0.0)[..., 0]  # [batch, length]
        lengths = batch.lengths()
        return [
            max_per_id(batch.input_ids[row, :n], token_weights[row, :n], self.dropped)
            for row, n in enumerate(lengths.tolist())
        ]

    def colbert(self, batch: Batch, states: np.ndarray) -> list[np.ndarray]:
        assert self.colbert_head is not None
        weight, bias = self.colbert_head
        lengths = batch.lengths().tolist()
        projected = states[:, 1:] @ weight + bias  # one matmul for the batch; padding rows are cut below
        return [np.ascontiguousarray(l2_normalize(projected[row, : n - 1]), dtype=np.float32) for row, n in enumerate(lengths)]


def sparse_rows(matrix: np.ndarray) -> list[SparseVector]:
    """Vocabulary-sized rows (SPLADE's pooled output) as their non-zero entries."""
    return [SparseVector.from_dense(row) for row in matrix]

"""The fidelity guard: how close a fast mode's outputs are to the fp32 reference.

A fixed calibration set (shipped with the package: short, long, multilingual sentences)
is embedded by both the fp32 torch reference and the fast mode; the mean and minimum
cosine similarity are reported (log, /model/info, /metrics) and a mode below the
threshold is refused. A model with more outputs than a dense vector has each measured too
(`compare_outputs`): sparse term weights by the cosine of the weight vectors and the overlap
of the ten heaviest terms, per-token vectors by their cosine token by token and by how far
MaxSim scores between calibration texts move; the lowest cosine is what the guard holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np

from embedserve.backends.base import Batch, Fidelity, Outputs, SparseVector, TokenIds
from embedserve.engine.scoring import maxsim
from embedserve.models.tasks import Task

TOP_TERMS = 10


def calibration_texts() -> list[str]:
    text = resources.files("embedserve.data").joinpath("calibration.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def embed_all(sequences: Sequence[TokenIds], embed: Callable[[Batch], np.ndarray], pad_id: int) -> np.ndarray:
    """Embed in length-sorted padded batches of 16, so padding handling is part of what is compared."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    rows = [
        embed(Batch.from_ids([sequences[i] for i in order[start : start + 16]], pad_id=pad_id))
        for start in range(0, len(order), 16)
    ]
    out = np.empty((len(sequences), rows[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(rows)
    return out


def compare(mode: str, reference: str, fast: np.ndarray, ref: np.ndarray) -> Fidelity:
    fast = fast / np.maximum(np.linalg.norm(fast, axis=1, keepdims=True), 1e-12)
    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    cos = (fast * ref).sum(axis=1)
    return Fidelity(mode, reference, float(cos.mean()), float(cos.min()), len(cos))


def encode_all(
    sequences: Sequence[TokenIds], encode: Callable[[Batch, frozenset[Task]], Outputs], tasks: frozenset[Task], pad_id: int
) -> Outputs:
    """Every output in `tasks`, in input order, computed in length-sorted padded batches of 16."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    out = Outputs(sparse=[None] * len(sequences) if Task.SPARSE in tasks else None,
                  multivector=[None] * len(sequences) if Task.MULTIVECTOR in tasks else None)
    for start in range(0, len(order), 16):
        rows = order[start : start + 16]
        batch = encode(Batch.from_ids([sequences[i] for i in rows], pad_id=pad_id), tasks)
        for k, i in enumerate(rows):
            if out.sparse is not None:
                out.sparse[i] = batch.sparse[k]
            if out.multivector is not None:
                out.multivector[i] = batch.multivector[k]
    return out


def _sparse_cosine(a: SparseVector, b: SparseVector) -> float:
    ids = np.union1d(a.indices, b.indices)
    if ids.size == 0:
        return 1.0
    x, y = np.zeros(ids.size), np.zeros(ids.size)
    x[np.searchsorted(ids, a.indices)] = a.values
    y[np.searchsorted(ids, b.indices)] = b.values
    norm = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / norm) if norm > 0 else 0.0


def _top_overlap(fast: SparseVector, ref: SparseVector) -> float | None:
    if ref.indices.size == 0:
        return None
    k = min(TOP_TERMS, ref.indices.size)
    top = lambda v: set(v.indices[np.argsort(-v.values, kind="stable")[:k]].tolist())  # noqa: E731
    return len(top(fast) & top(ref)) / k


def compare_outputs(fast: Outputs, ref: Outputs) -> dict[str, float]:
    """Per output, how close the fast mode's outputs are to the reference's (see the module docstring)."""
    measured: dict[str, float] = {}
    if fast.sparse is not None and ref.sparse is not None:
        cosines = [_sparse_cosine(a, b) for a, b in zip(fast.sparse, ref.sparse, strict=True)]
        overlaps = [o for a, b in zip(fast.sparse, ref.sparse, strict=True) if (o := _top_overlap(a, b)) is not None]
        measured["sparse_mean_cosine"] = float(np.mean(cosines))
        measured["sparse_min_cosine"] = float(np.min(cosines))
        measured[f"sparse_top{TOP_TERMS}_overlap"] = float(np.mean(overlaps)) if overlaps else 1.0
    if fast.multivector is not None and ref.multivector is not None:
        token_cosines = np.concatenate([
            (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            for a, b in zip(fast.multivector, ref.multivector, strict=True)
        ])
        measured["multivector_mean_cosine"] = float(token_cosines.mean())
        measured["multivector_min_cosine"] = float(token_cosines.min())
        pairs = list(zip(range(len(ref.multivector)), range(1, len(ref.multivector)), strict=False))
        moved = [
            abs(maxsim(fast.multivector[i], fast.multivector[j], mean=True) - maxsim(ref.multivector[i], ref.multivector[j], mean=True))
            for i, j in pairs
        ]
        measured["maxsim_max_abs_error"] = float(max(moved)) if moved else 0.0
    return measured

"""The fidelity guard: how close a fast mode's vectors are to the fp32 reference.

A fixed calibration set (shipped with the package: short, long, multilingual sentences)
is embedded by both the fp32 torch reference and the fast mode; the mean and minimum
cosine similarity are reported (log, /model/info, /metrics) and a mode below the
threshold is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources

import numpy as np

from embedserve.backends.base import Batch, Fidelity, TokenIds


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


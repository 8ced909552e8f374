"""Batch planning: which queued inputs run together.

Inputs are sorted by token length, then cut into contiguous groups. A batch of n inputs
padded to length L costs about n * L token-steps plus a fixed per-batch overhead (kernel
launches, Python, thread hand-offs). Big batches amortise the overhead but pad short inputs
up to long ones; small batches waste less on padding but pay the overhead more often. We
pick the cut points that minimise the total estimated cost (a small dynamic programme over
the sorted lengths), subject to the token budget and the size cap.

The overhead is the backend's own figure (Backend.batch_overhead_tokens). Measured on
all-MiniLM-L6-v2 on 2 CPU cores: eager torch ~60 tokens (Python per layer per batch), ONNX
Runtime ~11 (one call per batch); with pools of ~128 mixed-length sentences the torch figure
halves the padding of fixed 64-input batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

BATCH_OVERHEAD_TOKENS = 64


class HasLength(Protocol):
    def __len__(self) -> int: ...


T = TypeVar("T", bound=HasLength)


def plan_batches(
    items: Sequence[T], *, max_tokens: int, max_size: int, overhead: int = BATCH_OVERHEAD_TOKENS
) -> list[list[T]]:
    """Split `items` into batches, shortest inputs first, at the cheapest cut points.

    No batch has more than `max_size` inputs, and a batch's padded size (inputs x longest
    length) stays within `max_tokens`, except that an input longer than the whole budget
    runs alone rather than never.
    """
    ordered = sorted(items, key=len)
    n = len(ordered)
    if n == 0:
        return []
    lengths = [max(len(item), 1) for item in ordered]
    # best[i]: least cost of batching ordered[:i]; cut[i]: where the last batch of that plan starts.
    # A last batch ordered[start:end] costs (end - start) * longest + overhead, so the best start
    # minimises best[start] - start * longest: two array operations per end (this runs on the
    # event loop for every re-plan, so it is kept to few numpy calls).
    best = np.zeros(n + 1, dtype=np.float64)
    position = np.arange(n + 1, dtype=np.float64)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        fit = max(1, min(max_size, max_tokens // longest))  # inputs that fit in one batch here
        low = max(0, end - fit)
        scores = best[low:end] - position[low:end] * longest
        pick = int(scores.argmin())
        best[end] = scores[pick] + end * longest + overhead
        cut[end] = low + pick
    batches: list[list[T]] = []
    end = n
    while end > 0:
        start = cut[end]
        batches.append(ordered[start:end])
        end = start
    batches.reverse()
    return batches

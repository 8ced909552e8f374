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
    lengths = np.fromiter((max(len(item), 1) for item in ordered), dtype=np.int64, count=n)
    # best[i]: least cost of batching ordered[:i]; cut[i]: where the last batch of that plan starts
    best = np.zeros(n + 1, dtype=np.float64)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        longest = lengths[end - 1]
        fit = max(1, min(max_size, max_tokens // longest))  # inputs that fit in one batch here
        starts = np.arange(max(0, end - fit), end)
        costs = best[starts] + (end - starts) * longest + overhead
        pick = int(np.argmin(costs))
        best[end] = costs[pick]
        cut[end] = starts[pick]
    batches: list[list[T]] = []
    end = n
    while end > 0:
        start = int(cut[end])
        batches.append(ordered[start:end])
        end = start
    batches.reverse()
    return batches

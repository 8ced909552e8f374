"""Batch planning: which queued inputs run together.

Inputs are sorted by token length so each batch pads to a length close to all of its
members (padding is wasted compute), then cut into batches that respect both a token
budget (rows x padded length, which bounds memory and latency) and a size cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class HasLength(Protocol):
    def __len__(self) -> int: ...


T = TypeVar("T", bound=HasLength)


def plan_batches(items: Sequence[T], *, max_tokens: int, max_size: int) -> list[list[T]]:
    """Split `items` into batches, shortest inputs first.

    A batch of n inputs padded to length L costs n * L tokens; it never exceeds `max_tokens`
    unless a single input alone is longer than the budget (it then runs on its own rather
    than never). No batch has more than `max_size` inputs.
    """
    batches: list[list[T]] = []
    current: list[T] = []
    longest = 0
    for item in sorted(items, key=len):
        length = max(len(item), 1)
        new_longest = max(longest, length)
        if current and (len(current) + 1 > max_size or new_longest * (len(current) + 1) > max_tokens):
            batches.append(current)
            current, new_longest = [], length
        current.append(item)
        longest = new_longest
    if current:
        batches.append(current)
    return batches

"""What a model worker holds for each waiting request and input (engine/worker.py).

A request is admitted (`Admission`), then its inputs join the worker's pool as `PendingInput`s
pointing back at their `PendingRequest`, which collects the outputs of each input as the batch
holding it returns and completes the caller's future when the last one is in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedserve.backends.base import ModelInfo, Outputs, TokenIds
from embedserve.models.tasks import Task

DENSE = frozenset({Task.EMBED})
OUTPUT_FIELDS = {Task.EMBED: "dense", Task.SPARSE: "sparse", Task.MULTIVECTOR: "multivector", Task.SCORE: "scores"}


@dataclass(eq=False)
class PendingRequest:
    outputs: Outputs  # filled row by row as its inputs' batches return
    tasks: frozenset[Task]
    future: asyncio.Future
    remaining: int
    role: str | None = None  # "query" / "document" for a model that encodes them apart (Batch.roles)
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False
    due: float = 0.0  # virtual time: when it arrived plus the engine time its dispatched tokens took

    def __post_init__(self) -> None:
        self.due = self.enqueued

    def store(self, index: int, batch: Outputs, row: int) -> None:
        """Input `index`'s outputs, row `row` of a batch that computed at least this request's tasks."""
        mine = self.outputs
        if mine.dense is not None:
            mine.dense[index] = batch.dense[row]
        if mine.sparse is not None:
            mine.sparse[index] = batch.sparse[row]
        if mine.multivector is not None:
            mine.multivector[index] = batch.multivector[row]
        if mine.scores is not None:
            mine.scores[index] = batch.scores[row]


def empty_outputs(tasks: frozenset[Task], count: int, info: ModelInfo) -> Outputs:
    """Room for `count` inputs' outputs of the model described by `info`."""
    return Outputs(
        dense=np.empty((count, info.dimension), dtype=np.float32) if Task.EMBED in tasks else None,
        sparse=[None] * count if Task.SPARSE in tasks else None,
        multivector=[None] * count if Task.MULTIVECTOR in tasks else None,
        scores=np.empty((count, info.score_labels or 1), dtype=np.float32) if Task.SCORE in tasks else None,
    )


def padded_tokens(batch: Sequence[PendingInput]) -> int:
    return len(batch) * max(len(item) for item in batch)


@dataclass(eq=False)
class Admission:
    """One admitted request; `submitted` once its inputs reached the pool."""

    submitted: bool = False


@dataclass(eq=False)
class PendingInput:
    request: PendingRequest
    index: int
    ids: TokenIds
    types: TokenIds | None = None  # segment ids of a (query, document) pair

    def __len__(self) -> int:
        return len(self.ids)


def check_outputs(outputs: Outputs, count: int, tasks: frozenset[Task]) -> None:
    """A backend's answer for a batch of `count` inputs must hold every asked output, one per input."""
    for task in tasks:
        rows = getattr(outputs, OUTPUT_FIELDS[task])
        if rows is None:
            raise RuntimeError(f"backend computed no {task.value} output")
        if len(rows) != count:
            raise RuntimeError(f"backend returned {len(rows)} {OUTPUT_FIELDS[task]} outputs for {count} inputs")

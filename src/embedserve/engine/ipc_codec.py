"""What crosses the front-end/engine wire (engine/ipc.py), as a small header and raw arrays.

Token ids go as one int32 array plus the length of each sequence; outputs come back the same
way: dense and scores as [n, ...] float32, sparse and per-token vectors (ragged per input) as
their rows concatenated plus a count per input. A model's `ModelInfo` goes as a plain dict, so
a front-end can describe, validate and tokenize for a model the engine holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

import numpy as np

from embedserve.backends.base import Fidelity, ModelInfo, Outputs, SparseVector, TokenIds
from embedserve.models.tasks import Task


def pack_sequences(sequences: Sequence[TokenIds]) -> list[np.ndarray]:
    """[ids of every sequence, int32; each sequence's length, int32]."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int32, count=int(lengths.sum()))
    return [flat, lengths]


def unpack_sequences(flat: np.ndarray, lengths: np.ndarray) -> list[TokenIds]:
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])] if len(lengths) else []


def _ragged(rows: Sequence[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    return (np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype)), counts


def pack_outputs(outputs: Outputs) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The outputs asked for, as a header naming which arrays follow, and the arrays."""
    names: list[str] = []
    arrays: list[np.ndarray] = []
    if outputs.dense is not None:
        names.append("dense")
        arrays.append(np.asarray(outputs.dense, dtype=np.float32))
    if outputs.scores is not None:
        names.append("scores")
        arrays.append(np.asarray(outputs.scores, dtype=np.float32))
    if outputs.sparse is not None:
        names.append("sparse")
        indices, counts = _ragged([v.indices for v in outputs.sparse], np.int64)
        values, _ = _ragged([v.values for v in outputs.sparse], np.float32)
        arrays += [indices, values, counts]
    if outputs.multivector is not None:
        names.append("multivector")
        rows = outputs.multivector
        width = rows[0].shape[1] if rows else 0
        stacked = np.concatenate(rows).astype(np.float32, copy=False) if rows else np.zeros((0, width), np.float32)
        arrays += [stacked, np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))]
    return {"outputs": names}, arrays


def unpack_outputs(header: dict[str, Any], arrays: list[np.ndarray]) -> Outputs:
    out = Outputs()
    queue = list(arrays)
    for name in header["outputs"]:
        if name in ("dense", "scores"):
            setattr(out, name, queue.pop(0))
        elif name == "sparse":
            indices, values, counts = queue.pop(0), queue.pop(0), queue.pop(0)
            cuts = np.cumsum(counts)[:-1]
            out.sparse = [
                SparseVector(i, v) for i, v in zip(np.split(indices, cuts), np.split(values, cuts), strict=True)
            ] if len(counts) else []
        elif name == "multivector":
            stacked, counts = queue.pop(0), queue.pop(0)
            out.multivector = list(np.split(stacked, np.cumsum(counts)[:-1])) if len(counts) else []
        else:
            raise ValueError(f"unknown output {name!r} on the wire")
    return out


def info_to_dict(info: ModelInfo) -> dict[str, Any]:
    data = asdict(info)
    data["prompts"] = dict(info.prompts)
    data["tasks"] = sorted(task.value for task in info.tasks)
    data["labels"] = list(info.labels)
    if info.fidelity is not None:
        data["fidelity"] = {**asdict(info.fidelity), "outputs": dict(info.fidelity.outputs)}
    return data


def info_from_dict(data: dict[str, Any]) -> ModelInfo:
    known = {f.name for f in fields(ModelInfo)}
    values = {k: v for k, v in data.items() if k in known}
    values["tasks"] = frozenset(Task(t) for t in values.get("tasks", [Task.EMBED.value]))
    values["labels"] = tuple(values.get("labels", ()))
    if values.get("fidelity") is not None:
        values["fidelity"] = Fidelity(**values["fidelity"])
    return ModelInfo(**values)

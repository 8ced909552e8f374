"""The output folder: Parquet shards and the manifest that says which are complete.

Columns of every shard: `id` (the input's id column, or the row number as int64), then per
output asked: `dense` as `fixed_size_list<float32>[dimension]`; `sparse_indices`
(`list<int32>`, vocabulary ids ascending) and `sparse_values` (`list<float32>`, each > 0).

Crash safety: a shard is written to `.part-NNNNN.parquet.<pid>.tmp`, fsynced, then renamed to
`part-NNNNN.parquet`; only then is it recorded in _manifest.json (itself replaced atomically). A
run killed at any point leaves at most a temporary file (removed by the next run) or a whole
shard not yet recorded (written again), never half a shard under its final name.

Resume: _manifest.json's `job` records what the output was made from (input path, size and mtime;
model name, id and a fingerprint of its files; the outputs, columns, prompt, shard size and the
engine settings that change vectors). A later run with the same job skips every shard recorded
as complete whose file is present; a run whose job differs is refused, naming what changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedserve.corpus.encoder import Encoded

MANIFEST = "_manifest.json"
MANIFEST_VERSION = 1
TEMP_SUFFIX = ".tmp"


class ResumeRefused(RuntimeError):
    """The output folder holds (part of) a different job's output."""


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def output_columns(encoded: Encoded) -> dict[str, pa.Array]:
    """The output columns of encoded rows (no id)."""
    columns: dict[str, pa.Array] = {}
    if encoded.dense is not None:
        dense = np.ascontiguousarray(encoded.dense, dtype=np.float32)
        columns["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(dense.reshape(-1)), dense.shape[1])
    if encoded.sparse is not None:
        columns["sparse_indices"] = _lists([v.indices.astype(np.int32, copy=False) for v in encoded.sparse], pa.int32())
        columns["sparse_values"] = _lists([v.values.astype(np.float32, copy=False) for v in encoded.sparse], pa.float32())
    return columns


def _lists(rows: list[np.ndarray], kind: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    flat = np.concatenate(rows) if rows else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=kind))


def shard_table(ids: pa.Array | pa.ChunkedArray | None, first_row: int, columns: dict[str, pa.Array]) -> pa.Table:
    """A shard: its ids (None: the row numbers from `first_row`) and output columns."""
    rows = len(next(iter(columns.values())))
    if ids is None:
        ids = pa.array(np.arange(first_row, first_row + rows, dtype=np.int64))
    return pa.table({"id": ids, **columns})


def _write_atomic(final: Path, write) -> None:
    temp = final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_shard(folder: Path, index: int, table: pa.Table) -> Path:
    final = folder / shard_name(index)
    _write_atomic(final, lambda fh: pq.write_table(table, fh, compression="zstd"))
    return final


def remove_temporaries(folder: Path) -> list[str]:
    """Temporary shards an interrupted run left behind."""
    removed = []
    for temp in folder.glob(f".part-*{TEMP_SUFFIX}"):
        temp.unlink(missing_ok=True)
        removed.append(temp.name)
    return removed


def differences(recorded: dict, asked: dict, where: str = "") -> list[str]:
    """Human-readable differences between two job records ("input.size: 123 -> 456")."""
    out = []
    for key in sorted(set(recorded) | set(asked)):
        old, new = recorded.get(key), asked.get(key)
        name = f"{where}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            out.extend(differences(old, new, name + "."))
        elif old != new:
            out.append(f"{name}: {json.dumps(old)} -> {json.dumps(new)}")
    return out


class Manifest:
    """_manifest.json of one output folder."""

    def __init__(self, folder: Path, job: dict, complete: dict[int, dict] | None = None, state: dict | None = None):
        self.folder = folder
        self.job = job
        self.complete = complete or {}
        self.state = state or {}

    @classmethod
    def open(cls, folder: Path, job: dict) -> Manifest:
        """The folder's manifest for `job`: a new one for an empty or absent folder, the recorded one
        when it was written for the same job, else ResumeRefused."""
        path = folder / MANIFEST
        if path.is_file():
            recorded = json.loads(path.read_text())
            changed = differences(recorded.get("job", {}), job)
            if changed:
                raise ResumeRefused(
                    f"{folder} holds the output of a different job, so it can't be resumed; what changed:\n  "
                    + "\n  ".join(changed)
                    + "\nWrite to a new OUTPUT folder, or delete this one to start over."
                )
            complete = {int(k): v for k, v in recorded.get("complete", {}).items()}
            return cls(folder, job, complete, recorded.get("state", {}))
        if folder.exists() and not folder.is_dir():
            raise ResumeRefused(f"{folder} is a file; OUTPUT is a folder")
        if folder.is_dir() and any(folder.iterdir()):
            raise ResumeRefused(f"{folder} is not empty and has no {MANIFEST}: refusing to write shards into it")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = cls(folder, job)
        manifest.save()
        return manifest

    def is_complete(self, index: int) -> bool:
        return index in self.complete and (self.folder / shard_name(index)).is_file()

    def mark_complete(self, index: int, **details) -> None:
        self.complete[index] = {"file": shard_name(index), **details}
        self.save()

    def update(self, **state) -> None:
        self.state.update(state)
        self.save()

    def save(self) -> None:
        body = {
            "version": MANIFEST_VERSION,
            "job": self.job,
            "state": self.state,
            "complete": {str(k): self.complete[k] for k in sorted(self.complete)},
        }
        _write_atomic(self.folder / MANIFEST, lambda fh: fh.write(json.dumps(body, indent=1).encode()))


def pending_ranges(indices: Iterable[int], shard_size: int, rows: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering the shards `indices`, consecutive shards merged."""
    ranges: list[tuple[int, int]] = []
    for index in sorted(indices):
        start, stop = index * shard_size, min(rows, (index + 1) * shard_size)
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], stop)
        else:
            ranges.append((start, stop))
    return ranges

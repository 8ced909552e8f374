"""corpus/shards.py: column types, atomic shards, the manifest's resume checks."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedserve.backends.base import SparseVector
from embedserve.corpus.encoder import Encoded
from embedserve.corpus.shards import (
    MANIFEST,
    Manifest,
    ResumeRefused,
    output_columns,
    pending_ranges,
    remove_temporaries,
    shard_name,
    shard_table,
    write_shard,
)

JOB = {"input": {"path": "/c.parquet", "size": 10, "mtime_ns": 1}, "model": {"name": "m"}, "shard_size": 2}


def encoded() -> Encoded:
    dense = np.arange(6, dtype=np.float32).reshape(2, 3)
    sparse = [SparseVector(np.array([3, 9]), np.array([0.5, 1.5], np.float32)), SparseVector(np.array([], np.int64), np.array([], np.float32))]
    return Encoded(dense, sparse)


def test_columns_and_types(tmp_path):
    table = shard_table(None, 40, output_columns(encoded()))
    assert table.schema == pa.schema([
        ("id", pa.int64()), ("dense", pa.list_(pa.float32(), 3)),
        ("sparse_indices", pa.list_(pa.int32())), ("sparse_values", pa.list_(pa.float32())),
    ])
    assert table.column("id").to_pylist() == [40, 41]
    assert table.column("sparse_indices").to_pylist() == [[3, 9], []]
    path = write_shard(tmp_path, 7, table)
    assert path.name == shard_name(7) == "part-00007.parquet"
    assert pq.read_table(path).equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00007.parquet"]  # no temporary left


def test_given_ids_are_kept():
    table = shard_table(pa.array(["a", "b"]), 0, output_columns(Encoded(encoded().dense, None)))
    assert table.column_names == ["id", "dense"] and table.column("id").to_pylist() == ["a", "b"]


def test_a_failed_write_leaves_nothing_under_the_final_name(tmp_path):
    class Boom(Exception):
        pass

    bad = pa.table({"id": [1]})
    original = pq.write_table

    def failing(table, where, **kw):
        original(table, where, **kw)
        raise Boom

    pq.write_table = failing
    try:
        with pytest.raises(Boom):
            write_shard(tmp_path, 0, bad)
    finally:
        pq.write_table = original
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".part-00001.parquet.123.tmp").write_text("half")
    assert remove_temporaries(tmp_path) == [".part-00001.parquet.123.tmp"]


def test_manifest_resumes_the_same_job_and_refuses_another(tmp_path):
    out = tmp_path / "out"
    manifest = Manifest.open(out, JOB)
    write_shard(out, 0, pa.table({"id": [1]}))
    manifest.mark_complete(0, rows=1)
    manifest.mark_complete(1, rows=1)  # recorded, but its file is gone: not complete
    again = Manifest.open(out, JOB)
    assert again.is_complete(0) and not again.is_complete(1) and not again.is_complete(2)
    changed = {**JOB, "input": {**JOB["input"], "size": 11}, "model": {"name": "other"}}
    with pytest.raises(ResumeRefused) as refused:
        Manifest.open(out, changed)
    assert "input.size: 10 -> 11" in str(refused.value) and 'model.name: "m" -> "other"' in str(refused.value)


def test_a_folder_of_other_files_is_not_written_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ResumeRefused, match="not empty"):
        Manifest.open(tmp_path, JOB)
    assert not (tmp_path / MANIFEST).exists()


def test_pending_ranges_merge_consecutive_shards():
    assert pending_ranges([0, 1, 3, 4], 10, 45) == [(0, 20), (30, 45)]
    assert pending_ranges([], 10, 45) == []

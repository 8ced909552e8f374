"""corpus/reader.py: the three formats read alike, in order and in shards, with clear errors."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedserve.corpus.reader import CorpusInputError, CorpusSource, detect_format, fingerprint, texts_of

ROWS = [{"id": i, "text": f"text number {i}", "extra": "x"} for i in range(25)]


def write(folder, kind: str, rows=ROWS):
    path = folder / f"corpus.{kind}"
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        keys = list(rows[0])
        path.write_text(",".join(keys) + "\n" + "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv"])
def test_formats_give_the_same_rows_in_order_and_in_shards(tmp_path, kind):
    source = CorpusSource.open(write(tmp_path, kind), "text", "id", id_required=False)
    assert source.format == kind and source.count_rows() == 25
    got = [(index, first, table.column("id").to_pylist(), table.column("text").to_pylist())
           for index, first, table in source.shards(10)]
    assert [(i, f, len(ids)) for i, f, ids, _ in got] == [(0, 0, 10), (1, 10, 10), (2, 20, 5)]
    assert [i for _, _, ids, _ in got for i in ids] == list(range(25))
    assert [t for *_, texts in got for t in texts] == [r["text"] for r in ROWS]
    assert all(table.column_names == ["text", "id"] for *_, table in source.shards(10))


def test_text_column_is_read_as_text_even_when_it_looks_like_numbers(tmp_path):
    rows = [{"id": i, "text": str(i)} for i in range(5)]
    for kind in ("jsonl", "csv"):
        source = CorpusSource.open(write(tmp_path, kind, rows), "text", "id", id_required=False)
        (_, _, table), = source.shards(10)
        assert table.column("text").to_pylist() == ["0", "1", "2", "3", "4"]


def test_missing_id_column_means_row_numbers_unless_named(tmp_path):
    path = write(tmp_path, "jsonl", [{"text": "a"}, {"text": "b"}])
    assert CorpusSource.open(path, "text", "id", id_required=False).id_column is None
    with pytest.raises(CorpusInputError, match="no column 'id'"):
        CorpusSource.open(path, "text", "id", id_required=True)
    with pytest.raises(CorpusInputError, match="no column 'body'.*--text-column"):
        CorpusSource.open(path, "body", None, id_required=False)


def test_unknown_extension_and_null_text_are_refused(tmp_path):
    with pytest.raises(CorpusInputError, match="extension '.txt'"):
        detect_format(tmp_path / "corpus.txt")
    table = pa.table({"text": ["a", None, "c"]})
    with pytest.raises(CorpusInputError, match="row 11: 'text' is null"):
        texts_of(table, "text", first_row=10)


def test_fingerprint_changes_with_the_file(tmp_path):
    path = write(tmp_path, "csv")
    before = fingerprint(path)
    path.write_text(path.read_text() + "99,more,x\n")
    assert fingerprint(path) != before and fingerprint(path)["path"] == str(path.resolve())

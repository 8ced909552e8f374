"""The corpus file: its format (by extension), its columns, its rows in order, streamed.

Parquet is read by row groups (`ParquetFile.iter_batches`), JSONL and CSV with pyarrow's
streaming readers (`pyarrow.json.open_json`, `pyarrow.csv.open_csv`), so a corpus is never held
whole in memory: at most one shard of rows plus one read batch. The text column is always read
as a string; the id column keeps the type pyarrow reads it as. Ray mode reads the same file with
Ray Data's readers, given the same options (`csv_convert_options`, `json_parse_options`), so both
modes see the same values and types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
READ_BATCH_ROWS = 8192
JSON_BLOCK_BYTES = 4 << 20  # pyarrow infers a JSONL file's types from its first block


class CorpusInputError(ValueError):
    """The input file can't be read as asked (format, missing column, null text)."""


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise CorpusInputError(f"{path}: can't tell the format from the extension {suffix!r} (known: {known})")
    return FORMATS[suffix]


def fingerprint(path: Path) -> dict:
    """What identifies the input between runs: its absolute path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def json_parse_options(text_column: str):
    import pyarrow.json as pajson

    return pajson.ParseOptions(
        explicit_schema=pa.schema([(text_column, pa.string())]), unexpected_field_behavior="infer"
    )


def csv_convert_options(columns: list[str], text_column: str):
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(include_columns=columns, column_types={text_column: pa.string()})


@dataclass(frozen=True)
class CorpusSource:
    """One corpus file and the columns read from it. `id_column` None: ids are row numbers."""

    path: Path
    format: str
    text_column: str
    id_column: str | None

    @classmethod
    def open(cls, path: Path, text_column: str, id_column: str | None, *, id_required: bool) -> CorpusSource:
        """Checks the file and its columns. A missing `id_column` is an error when `id_required`
        (the flag was given), else the row numbers (from 0) are the ids."""
        if not path.is_file():
            raise CorpusInputError(f"{path}: no such file")
        source = cls(path, detect_format(path), text_column, id_column)
        names = source.column_names()
        if text_column not in names:
            raise CorpusInputError(f"{path}: no column {text_column!r} (columns: {', '.join(names)}); see --text-column")
        if id_column is not None and id_column not in names:
            if id_required:
                raise CorpusInputError(f"{path}: no column {id_column!r} (columns: {', '.join(names)}); see --id-column")
            source = cls(path, source.format, text_column, None)
        if id_column == text_column:
            raise CorpusInputError("--id-column and --text-column name the same column")
        return source

    @property
    def columns(self) -> list[str]:
        return [self.text_column] + ([self.id_column] if self.id_column else [])

    def column_names(self) -> list[str]:
        """The file's columns, from its schema (Parquet) or its first block (JSONL, CSV)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(self.path).names)
        if self.format == "csv":
            import pyarrow.csv as pacsv

            with pacsv.open_csv(self.path) as reader:
                return list(reader.schema.names)
        import pyarrow.json as pajson

        with pajson.open_json(self.path, read_options=pajson.ReadOptions(block_size=JSON_BLOCK_BYTES)) as reader:
            return list(reader.schema.names)

    def batches(self, rows: int = READ_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The text (and id) columns, in file order."""
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                with pq.ParquetFile(self.path) as parquet:
                    for batch in parquet.iter_batches(batch_size=rows, columns=self.columns):
                        yield batch.select(self.columns)
                return
            if self.format == "csv":
                import pyarrow.csv as pacsv

                reader = pacsv.open_csv(self.path, convert_options=csv_convert_options(self.columns, self.text_column))
            else:
                import pyarrow.json as pajson

                reader = pajson.open_json(
                    self.path, read_options=pajson.ReadOptions(block_size=JSON_BLOCK_BYTES),
                    parse_options=json_parse_options(self.text_column),
                )
            with reader:
                for batch in reader:
                    yield batch.select(self.columns)
        except pa.ArrowInvalid as exc:
            raise CorpusInputError(f"{self.path}: {exc}") from None

    def count_rows(self) -> int:
        """Rows in the file: Parquet's metadata, else one streaming pass over the two columns."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        return sum(batch.num_rows for batch in self.batches())

    def shards(self, shard_size: int) -> Iterator[tuple[int, int, pa.Table]]:
        """(shard index, first row, rows) for consecutive shards of `shard_size` rows; the last may be shorter."""
        pending: list[pa.RecordBatch] = []
        held = index = first = 0
        for batch in self.batches(min(shard_size, READ_BATCH_ROWS)):
            pending.append(batch)
            held += batch.num_rows
            while held >= shard_size:
                table = pa.Table.from_batches(pending)
                yield index, first, table.slice(0, shard_size)
                rest = table.slice(shard_size)
                pending, held = rest.to_batches(), rest.num_rows
                index, first = index + 1, first + shard_size
        if held:
            yield index, first, pa.Table.from_batches(pending)


def texts_of(table: pa.Table, text_column: str, first_row: int | None = None) -> list[str]:
    """The texts of a table of rows, or CorpusInputError naming the first row whose text is null
    (by its row number when `first_row` is known, else by its id column's value where there is one)."""
    column = table.column(text_column)
    if column.null_count:
        row = next(i for i, value in enumerate(column.is_null().to_pylist()) if value)
        where = f"row {first_row + row}" if first_row is not None else f"the row {table.slice(row, 1).to_pylist()[0]}"
        raise CorpusInputError(f"{where}: {text_column!r} is null; every row needs a text")
    return column.to_pylist()

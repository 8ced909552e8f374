"""Bulk corpus embedding: `embedserve embed-corpus INPUT OUTPUT`.

A corpus file (Parquet, JSONL or CSV) is read as a stream of row batches and cut into shards of
`--shard-size` consecutive rows; each shard becomes one Parquet file of the output folder, written
under a temporary name and renamed when whole, and recorded as complete in the folder's
_manifest.json, so an interrupted run resumes at the first shard not yet recorded.

    reader.py      the input: format by extension, columns, row count, fingerprint, shards of rows
    encoder.py     our engine without the server: the backend the server builds (backends/factory.py),
                   the server's prompt profile, tokenization, batch planning (engine/batcher.py) and
                   output finishing (engine/processing.py), so a vector equals the server's
    shards.py      the output: Parquet columns, atomic shard files, the manifest and its resume checks
    runner.py      one job: checks, then the local loop (one process) or the Ray mode, with progress
    ray_runner.py  Ray Data: read_parquet/read_json/read_csv, map_batches over an actor pool of
                   CorpusEncoder, shards written by the driver in row order
    command.py     the click command, its engine flags generated from the server's Settings

Nothing here imports FastAPI or the HTTP layer.
"""

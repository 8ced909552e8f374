"""embed-corpus on Ray Data: the same engine in an actor pool, the same shards on the driver.

    ray.data.read_parquet / read_json / read_csv (the reader's own options, so the same types)
      -> map_batches(RayEncoder, concurrency=N actors, num_cpus / num_gpus per actor)
      -> iter_batches on the driver, in input order (DataContext preserve_order)
      -> shards.py: the same shard files and manifest as local mode

Each actor builds one CorpusEncoder (the model loads once per actor) with `--threads` set to the
CPUs it was given and one inference thread; it returns the finished output columns of each batch
of `batch_rows` rows. The driver cuts the ordered stream into the shards still to do and writes
them as local mode does, so the output (and its resume) does not depend on the mode, and only the
driver needs to reach OUTPUT (INPUT must be readable from every node: shared storage).

The input is read into Ray's object store (`materialize`: text and ids only; Ray spills it to
disk when it is large) before the actors start. Two reasons: Ray Data's read tasks each need a
CPU, and an actor pool holding every CPU (the default: one actor per CPU) would starve them and
hang; and resume needs row positions. Resume is per shard here too: shards recorded complete are
not embedded again, the unfinished row ranges are split out of the read (`split_at_indices`).
A shard is recorded only once all its rows are back on the driver, so rows of the shard in
progress are embedded again after an interruption (as in local mode).
"""

from __future__ import annotations

import logging
from collections import deque

import pyarrow as pa

from embedserve.corpus import shards
from embedserve.corpus.encoder import CorpusEncoder
from embedserve.corpus.reader import JSON_BLOCK_BYTES, CorpusSource, csv_convert_options, json_parse_options, texts_of
from embedserve.settings import Settings

log = logging.getLogger(__name__)


class RayEncoder:
    """The map_batches callable class: one CorpusEncoder per actor, built once in __init__."""

    def __init__(
        self, settings: Settings, model: str, outputs: tuple[str, ...], input_type: str | None,
        text_column: str, id_column: str | None, threads: int,
    ):
        settings = settings.model_copy(update={"threads": threads, "model_workers": 1})
        self.encoder = CorpusEncoder(settings, model, outputs=outputs, input_type=input_type)
        self.text_column, self.id_column = text_column, id_column

    def __call__(self, table: pa.Table) -> pa.Table:
        encoded = self.encoder.encode(texts_of(table, self.text_column))
        columns = shards.output_columns(encoded)
        if self.id_column is not None:
            columns = {"id": table.column(self.id_column), **columns}
        return pa.table(columns)


def read_dataset(source: CorpusSource):
    import ray.data

    path = str(source.path)
    if source.format == "parquet":
        dataset = ray.data.read_parquet(path, columns=source.columns, file_extensions=None)
    elif source.format == "csv":
        dataset = ray.data.read_csv(
            path, convert_options=csv_convert_options(source.columns, source.text_column), file_extensions=None
        )
    else:
        import pyarrow.json as pajson

        dataset = ray.data.read_json(
            path, parse_options=json_parse_options(source.text_column),
            read_options=pajson.ReadOptions(block_size=JSON_BLOCK_BYTES), file_extensions=None,
        )
    return dataset.select_columns(source.columns)


def unfinished_rows(dataset, ranges: list[tuple[int, int]], rows: int):
    """Only the rows in `ranges` ([start, stop), ascending) of a materialized dataset, in order."""
    if ranges == [(0, rows)]:
        return dataset
    cuts = sorted({edge for span in ranges for edge in span} - {0, rows})
    parts = dataset.split_at_indices(cuts)
    starts = [0, *cuts]
    wanted = [part for part, start in zip(parts, starts, strict=True) if any(a <= start < b for a, b in ranges)]
    if len(wanted) == 1:
        return wanted[0]
    import ray.data

    # Dataset.union interleaves its inputs' blocks even with preserve_order; a list of blocks keeps its order.
    return ray.data.from_arrow_refs([ref for part in wanted for ref in part.to_arrow_refs()])


class ShardSink:
    """Cuts the driver's ordered stream of encoded rows into the pending shards and writes each."""

    def __init__(self, job, manifest: shards.Manifest, pending: list[int], rows: int, summary, bar):
        size = job.shard_size
        self.job, self.manifest, self.summary, self.bar = job, manifest, summary, bar
        self.queue = deque((k, k * size, min(rows, (k + 1) * size)) for k in sorted(pending))
        self.buffer: list[pa.Table] = []
        self.held = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.held += table.num_rows
        while self.queue and self.held >= self.queue[0][2] - self.queue[0][1]:
            index, first_row, stop = self.queue.popleft()
            whole = pa.concat_tables(self.buffer).combine_chunks()
            shard, rest = whole.slice(0, stop - first_row), whole.slice(stop - first_row)
            self.buffer, self.held = ([rest] if rest.num_rows else []), rest.num_rows
            ids = shard.column("id") if "id" in shard.column_names else None
            columns = {name: shard.column(name) for name in shard.column_names if name != "id"}
            shards.write_shard(self.job.output, index, shards.shard_table(ids, first_row, columns))
            self.manifest.mark_complete(index, rows=shard.num_rows, first_row=first_row, by="ray")
            self.summary.written.append(index)
            self.bar.update(shard.num_rows)

    def finish(self) -> None:
        if self.queue or self.held:
            raise RuntimeError(
                f"Ray Data returned a different number of rows than the input holds ({len(self.queue)} shards "
                f"unfilled, {self.held} rows left over); the input may have changed while it ran"
            )


def run_on_ray(job, settings: Settings, source: CorpusSource, manifest: shards.Manifest, pending: list[int], summary, bar) -> str:
    import ray

    options = job.ray
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # shards are row ranges: rows come back in input order
        context.enable_progress_bars = False  # ours counts rows written
        resources = ray.cluster_resources()
        actors = options.actors or _default_actors(resources, options.cpus_per_actor, options.gpus_per_actor)
        ranges = shards.pending_ranges(pending, job.shard_size, summary.rows)
        # blocks of batch_rows rows, so every actor gets work (a single-file read is often one block)
        read = read_dataset(source).repartition(target_num_rows_per_block=options.batch_rows).materialize()
        if read.count() != summary.rows:
            raise RuntimeError(f"Ray Data read {read.count()} rows from {source.path}, not {summary.rows}")
        dataset = unfinished_rows(read, ranges, summary.rows)
        encoded = dataset.map_batches(
            RayEncoder,
            fn_constructor_kwargs={
                "settings": settings, "model": job.model, "outputs": tuple(job.outputs), "input_type": job.input_type,
                "text_column": source.text_column, "id_column": source.id_column,
                "threads": max(1, int(options.cpus_per_actor)),
            },
            batch_size=options.batch_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
        )
        sink = ShardSink(job, manifest, pending, summary.rows, summary, bar)
        for batch in encoded.iter_batches(batch_size=None, batch_format="pyarrow"):
            sink.add(batch)
        sink.finish()
    finally:
        if started_here:
            ray.shutdown()
    return f"ray, {actors} actor{'s' if actors != 1 else ''}"


def _default_actors(resources: dict, cpus: float, gpus: float) -> int:
    by_cpu = int(resources.get("CPU", 1) // cpus) if cpus else 1 << 10
    by_gpu = int(resources.get("GPU", 0) // gpus) if gpus else 1 << 10
    return max(1, min(by_cpu, by_gpu))

"""One embed-corpus job: check it against the output folder, then embed the shards not yet done.

Order of work: open the input (format, columns), resolve the model (no loading), and check the
job against the output folder's manifest, so a changed input or model is refused before any
model loads; then count the rows, and run the unfinished shards locally (one process, this
module) or on Ray (ray_runner.py). Both write the same shards through shards.py.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from embedserve.corpus import shards
from embedserve.corpus.encoder import CorpusEncoder, model_fingerprint, resolve_model, tasks_for
from embedserve.corpus.reader import CorpusSource, fingerprint, texts_of
from embedserve.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000


@dataclass(frozen=True)
class CorpusJob:
    input: Path
    output: Path
    model: str
    text_column: str = "text"
    id_column: str | None = "id"
    id_required: bool = False  # the id column was named explicitly: its absence is an error
    outputs: tuple[str, ...] = ("dense",)
    input_type: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    progress: bool = True
    ray: RayOptions | None = None  # None: local mode


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local Ray (or use the one this process is connected to)
    actors: int | None = None  # None: the cluster's CPUs (GPUs with gpus_per_actor) / per actor
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_rows: int = 1024  # rows per map_batches call; each actor plans its own batches inside


@dataclass
class Summary:
    rows: int
    shards: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0
    mode: str = ""
    embedded_rows: int = 0  # rows embedded by this run (not those of shards already complete)
    load_seconds: float = 0.0  # loading the model (local mode; Ray actors load theirs inside `seconds`)

    @property
    def rows_per_second(self) -> float:
        return self.embedded_rows / self.seconds if self.seconds else 0.0


def job_record(job: CorpusJob, settings: Settings, source: CorpusSource, model_id: str, model_files: str) -> dict:
    """What the output is made from: a resumed run must match it exactly (shards.Manifest.open)."""
    return {
        "input": {**fingerprint(source.path), "format": source.format},
        "columns": {"text": source.text_column, "id": source.id_column},
        "model": {"name": job.model, "id": model_id, "files": model_files},
        "outputs": list(job.outputs),
        "input_type": job.input_type,
        "shard_size": job.shard_size,
        "engine": {
            "device": settings.device, "backend": settings.backend, "dtype": settings.dtype,
            "truncate": settings.truncate, "min_fidelity": settings.min_fidelity, "int8_target": settings.int8_target,
        },
    }


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, unit="row", unit_scale=True, disable=not enabled, file=sys.stderr,
        dynamic_ncols=True, smoothing=0.1, desc="embedding",
    )


def run_job(job: CorpusJob, settings: Settings, *, encoder: CorpusEncoder | None = None) -> Summary:
    """Run `job`. `encoder`: a model already loaded for it (benchmarks reuse one between runs)."""
    tasks_for(job.outputs)  # an unknown output is refused before anything is read
    if job.shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    source = CorpusSource.open(job.input, job.text_column, job.id_column, id_required=job.id_required)
    resolved = resolve_model(settings, job.model)
    record = job_record(job, settings, source, resolved.id, model_fingerprint(resolved.path))
    manifest = shards.Manifest.open(job.output, record)
    for name in shards.remove_temporaries(job.output):
        log.info("removed %s, left by an interrupted run", name)
    rows = manifest.state.get("rows")
    if rows is None:  # counted once per output folder (the fingerprint pins the file)
        rows = source.count_rows()
        manifest.update(rows=rows, shards=math.ceil(rows / job.shard_size))
    summary = Summary(rows=rows, shards=math.ceil(rows / job.shard_size))
    pending = [k for k in range(summary.shards) if not manifest.is_complete(k)]
    summary.skipped = sorted(set(range(summary.shards)) - set(pending))
    done_rows = rows - sum(stop - start for start, stop in shards.pending_ranges(pending, job.shard_size, rows))
    given = encoder
    if pending and job.ray is None and encoder is None:  # the model loads before the clock and the bar start
        loading = time.perf_counter()
        encoder = CorpusEncoder(settings, job.model, outputs=job.outputs, input_type=job.input_type, resolved=resolved)
        summary.load_seconds = time.perf_counter() - loading
    started = time.perf_counter()
    try:
        with progress_bar(rows, done_rows, job.progress) as bar:
            if pending and job.ray is None:
                summary.mode = _run_local(job, encoder, source, manifest, set(pending), summary, bar)
            elif pending:
                from embedserve.corpus.ray_runner import run_on_ray

                summary.mode = run_on_ray(job, settings, source, manifest, pending, summary, bar)
    finally:
        if encoder is not None and given is None:
            encoder.close()
    summary.seconds = time.perf_counter() - started
    summary.embedded_rows = rows - done_rows
    if all(manifest.is_complete(k) for k in range(summary.shards)):
        manifest.update(finished=True)
    return summary


def _run_local(job, encoder: CorpusEncoder, source, manifest, pending: set[int], summary: Summary, bar) -> str:
    for index, first_row, table in source.shards(job.shard_size):
        if index not in pending:
            continue
        started = time.perf_counter()
        encoded = encoder.encode(texts_of(table, source.text_column, first_row))
        ids = table.column(source.id_column) if source.id_column else None
        shards.write_shard(job.output, index, shards.shard_table(ids, first_row, shards.output_columns(encoded)))
        manifest.mark_complete(
            index, rows=table.num_rows, first_row=first_row, mode=encoder.mode, by="local",
            seconds=round(time.perf_counter() - started, 3),
        )
        summary.written.append(index)
        bar.update(table.num_rows)
    return f"local, {encoder.mode}"

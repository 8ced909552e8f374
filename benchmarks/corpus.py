"""embed-corpus throughput against the bare engine on the same texts, and the Ray mode's overhead.

Bare engine: benchmarks/engine_limit.py's loop (every text tokenized up front and untimed, batches
planned over the whole set with plan_batches, Batch.from_ids, Backend.embed back to back), run on
the very backend the corpus run uses (one model load: the same auto mode, the same threads;
with --model-workers N > 1 its batches run on N threads, as the corpus encoder runs them).
Corpus: run_job on a Parquet file of the same texts: reading, tokenizing, planning per shard,
finishing, writing shards and the manifest; the model load is not timed. The two are
interleaved over rounds on this shared machine and each ratio is taken within its round.

Ray (--ray): the same corpus on a local two-node Ray cluster (ray.cluster_utils, one CPU per
node, so two actors with one thread each), timed end to end as a user sees it (reading into the
object store, actors starting and loading the model, embedding, shards written by the driver),
against local mode in the same round; its vectors are checked against local mode's.

    .venv/bin/python benchmarks/corpus.py --total 10000 --rounds 2 --ray
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_limit  # noqa: E402  (its bare-engine loop is the baseline; the model package it uses)
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sentences import WORKLOADS, load_workload, uniform_lengths  # noqa: E402

from embedserve.corpus.encoder import CorpusEncoder  # noqa: E402
from embedserve.corpus.runner import CorpusJob, RayOptions, run_job  # noqa: E402
from embedserve.settings import DEFAULT_MODEL, Settings  # noqa: E402


def bare_engine(encoder: CorpusEncoder, texts: list[str], settings: Settings) -> float:
    """Seconds for engine_limit's loop over `texts` on the encoder's backend."""
    backend = encoder.backend
    ids = backend.tokenize(texts, truncate=True)
    started = time.perf_counter()
    plan = engine_limit.plan_batches(
        ids, max_tokens=settings.max_batch_tokens, max_size=settings.max_batch_size, overhead=backend.batch_overhead_tokens
    )

    def run(batch):
        return backend.embed(engine_limit.Batch.from_ids(batch, pad_id=backend.pad_id))

    if settings.model_workers > 1:
        with ThreadPoolExecutor(settings.model_workers) as pool:
            list(pool.map(run, plan))
    else:
        for batch in plan:
            run(batch)
    return time.perf_counter() - started


def corpus_run(job: CorpusJob, settings: Settings, encoder: CorpusEncoder | None = None) -> float:
    shutil.rmtree(job.output, ignore_errors=True)
    started = time.perf_counter()
    summary = run_job(job, settings, encoder=encoder)
    return summary.seconds if encoder is not None else time.perf_counter() - started


def dense(folder: Path) -> np.ndarray:
    column = pq.read_table(folder).column("dense").combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lengths", choices=WORKLOADS, default="uniform")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model-workers", type=int, default=Settings.model_fields["model_workers"].default)
    parser.add_argument("--ray", action="store_true", help="also the Ray mode on a two-node local cluster")
    args = parser.parse_args()
    texts = uniform_lengths(count=args.total) if args.lengths == "uniform" else load_workload(args.lengths)[: args.total]
    work = Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    source = work / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), source)
    settings = Settings(backend=args.backend, dtype=args.dtype, model_workers=args.model_workers)
    job = CorpusJob(source, work / "local", args.model, shard_size=args.shard_size, progress=False)
    encoder = CorpusEncoder(settings, args.model)
    print(f"{len(texts)} {args.lengths} texts, {args.model}, {encoder.mode}, model_workers={args.model_workers}, "
          f"shard size {args.shard_size}")
    bare_engine(encoder, texts, settings)  # untimed: the first run of each padded shape builds its kernels (oneDNN)
    bare, corpus, ratios = [], [], []
    for _ in range(args.rounds):
        b = bare_engine(encoder, texts, settings)
        c = corpus_run(job, settings, encoder)
        bare.append(len(texts) / b)
        corpus.append(len(texts) / c)
        ratios.append(b / c)
    print(f"bare engine   {statistics.median(bare):8.1f} texts/s  (rounds: {[round(v) for v in bare]})")
    print(f"embed-corpus  {statistics.median(corpus):8.1f} texts/s  (rounds: {[round(v) for v in corpus]})")
    print(f"corpus / bare {statistics.median(ratios):8.3f}          (rounds: {[round(v, 3) for v in ratios]})")
    if args.ray:
        measure_ray(args, settings, job, encoder, work)
    shutil.rmtree(work, ignore_errors=True)


def measure_ray(args, settings: Settings, job: CorpusJob, encoder: CorpusEncoder, work: Path) -> None:
    import dataclasses

    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        ray_job = dataclasses.replace(job, output=work / "ray", ray=RayOptions())
        for round_ in range(args.rounds):
            local = corpus_run(job, settings, encoder)
            started = time.perf_counter()
            corpus_run(ray_job, settings)
            on_ray = time.perf_counter() - started
            diff = float(np.abs(dense(work / "ray") - dense(work / "local")).max())
            print(f"round {round_}: local {local:6.1f} s, ray (2 nodes x 1 CPU, end to end) {on_ray:6.1f} s, "
                  f"ray / local {on_ray / local:5.2f}x, max |ray - local| {diff:.2e}")
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()

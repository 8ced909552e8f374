"""`embedserve embed-corpus INPUT OUTPUT`: the click command.

The engine's flags (--backend, --dtype, --device, --max-batch-size, --threads, ...) are generated
from the server's Settings fields, as `serve`'s are, and the Settings object is built the same
way (env, then flags), so a corpus is embedded with exactly the settings a server would use.
Nothing heavy (torch, pyarrow, Ray) is imported until the command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

# The Settings fields that decide how a model is found, built and run: flags of embed-corpus too.
ENGINE_SETTINGS = (
    "models_dir", "revision", "device", "backend", "dtype", "torch_compile", "cuda_graphs", "min_fidelity",
    "int8_target", "cache_dir", "max_batch_tokens", "max_batch_size", "truncate", "threads", "model_workers",
    "log_level", "log_format",
)

HELP = """Embed a corpus file into Parquet shards, resumably.

INPUT is a .parquet, .jsonl (or .json / .ndjson: one object per line) or .csv file; OUTPUT a folder
of part-00000.parquet, ... shards of --shard-size rows each, plus _manifest.json. Columns: id (the
--id-column, or the row number when the input has no such column), dense
(fixed_size_list<float32>[dim]) and, with --outputs sparse, sparse_indices (list<int32>) and
sparse_values (list<float32>). Vectors are the server's for the same texts and settings.

Re-running the same command resumes: shards recorded complete in _manifest.json are skipped; a run
with a changed input (path, size, mtime), model or options is refused. Each shard is written under a
temporary name and renamed when whole.

Locally the model runs in this process on our engine. With --ray it runs on Ray Data, an actor pool
of the same engine (resume is per shard there too, but a resumed run first reads the whole input
into Ray's object store to leave the finished rows out). `--ray` alone starts a local Ray, or joins
the one RAY_ADDRESS names; `--ray=ADDRESS` (e.g. --ray=auto, --ray=ray://head:10001) joins a
cluster. Give the address with '=' or put --ray after INPUT and OUTPUT.
"""


def corpus_command(option_for: Callable) -> click.Command:
    """The command; `option_for(name, field)` makes a Settings field's flag (cli._click_option)."""
    from embedserve.settings import Settings

    params = [
        click.Argument(["input"], type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.Argument(["output"], type=click.Path(file_okay=False, path_type=Path)),
        click.Option(["--model"], default=None, help="The model (folder, installed model package, name under "
                     "--models-dir, or Hub id) [default: the server's default model, or EMBEDSERVE_MODELS' first]"),
        click.Option(["--text-column"], default="text", show_default=True, help="Column holding the texts."),
        click.Option(["--id-column"], default=None,
                     help="Column copied to the output's id column [default: 'id' if the input has one, else row numbers]"),
        click.Option(["--outputs"], default="dense", show_default=True, help="dense, sparse or dense,sparse."),
        click.Option(["--input-type"], type=click.Choice(["query", "document"]), default=None,
                     help="The model's query or document prefix, as the API's input_type [default: the model's "
                     "default prompt, as a request without input_type]"),
        click.Option(["--shard-size"], type=click.IntRange(min=1), default=None,
                     help="Rows per output shard; what an interruption can cost [default: 10000]"),
        click.Option(["--progress/--no-progress"], default=True, show_default=True, help="Progress bar on stderr."),
        click.Option(["--ray", "ray_address"], is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                     help="Run on Ray Data (see above)."),
        click.Option(["--ray-actors"], type=click.IntRange(min=1), default=None,
                     help="Engine actors [default: the cluster's CPUs / --ray-cpus-per-actor]"),
        click.Option(["--ray-cpus-per-actor"], type=click.FloatRange(min=0, min_open=True), default=1.0,
                     show_default=True, help="CPUs per actor (its engine's threads)."),
        click.Option(["--ray-gpus-per-actor"], type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="GPUs per actor (with --device cuda)."),
        click.Option(["--ray-batch-rows"], type=click.IntRange(min=1), default=1024, show_default=True,
                     help="Rows per map_batches call (each actor plans its own batches within them)."),
        *[option_for(name, Settings.model_fields[name]) for name in ENGINE_SETTINGS],
    ]
    return click.Command("embed-corpus", callback=_embed_corpus, params=params, help=HELP,
                         short_help="Embed a Parquet/JSONL/CSV corpus into Parquet shards (locally or on Ray).")


def _embed_corpus(input: Path, output: Path, model, text_column, id_column, outputs, input_type, shard_size,
                  progress, ray_address, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor, ray_batch_rows,
                  **flags) -> None:
    from pydantic import ValidationError

    from embedserve.cli import build_settings, load_env_file, settings_error

    load_env_file()
    try:
        settings = build_settings(**flags)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    _configure_logging(settings, flags)

    from embedserve.corpus.encoder import CorpusModelError
    from embedserve.corpus.reader import CorpusInputError
    from embedserve.corpus.runner import DEFAULT_SHARD_SIZE, CorpusJob, RayOptions, run_job
    from embedserve.corpus.shards import ResumeRefused
    from embedserve.errors import ModelLoadError, ModelNotFound

    ray = None
    if ray_address is not None:
        ray = RayOptions(ray_address or None, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor, ray_batch_rows)
    job = CorpusJob(
        input=input, output=output, model=model or settings.models[0], text_column=text_column,
        id_column=id_column or "id", id_required=id_column is not None,
        outputs=tuple(o.strip() for o in outputs.split(",") if o.strip()), input_type=input_type,
        shard_size=shard_size or DEFAULT_SHARD_SIZE, progress=progress, ray=ray,
    )
    try:
        summary = run_job(job, settings)
    except (CorpusInputError, CorpusModelError, ResumeRefused, ModelNotFound, ModelLoadError) as exc:
        raise click.ClickException(getattr(exc, "message", None) or str(exc)) from None
    if not summary.written:
        click.echo(f"{output}: all {summary.shards} shards ({summary.rows} rows) were already complete", err=True)
        return
    skipped = f", {len(summary.skipped)} already complete" if summary.skipped else ""
    loaded = f"; model loaded in {summary.load_seconds:.1f} s" if summary.load_seconds else ""
    click.echo(
        f"{output}: {len(summary.written)} shards written{skipped}; {summary.embedded_rows} rows in "
        f"{summary.seconds:.1f} s ({summary.rows_per_second:.0f} rows/s, {summary.mode}{loaded})", err=True,
    )


def _configure_logging(settings, flags: dict) -> None:
    """Warnings only, as text, unless --log-level / --log-format (or their env vars) say otherwise."""
    import os

    from embedserve.logs import configure_logging

    level = settings.log_level if flags.get("log_level") or os.environ.get("EMBEDSERVE_LOG_LEVEL") else "warning"
    fmt = settings.log_format if flags.get("log_format") or os.environ.get("EMBEDSERVE_LOG_FORMAT") else "text"
    configure_logging(level, fmt)
    try:  # transformers' own "Loading weights" bars would break ours
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass

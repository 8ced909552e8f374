"""`embedserve train`: the server's fine-tuning job, run from the command line for offline training.

It prepares the same job folder the server would and starts the same runner process
(`python -m embedserve.training.run`), then follows its events file with a progress bar, so a
model trained here is exactly what the server would have produced.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click

from embedserve.training.data import read_file
from embedserve.training.defaults import defaults_for, prepare_job
from embedserve.training.run import qlora_support, read_events

__all__ = ["train_command"]


def _resolve_base(base: str, models_dir: Path) -> str:
    """A folder path as given, else `<models-dir>/<name with / as -->`, else a packaged model."""
    for candidate in (Path(base), models_dir / base, models_dir / base.replace("/", "--")):
        if candidate.is_dir():
            return str(candidate)
    from embedserve.models.packages import find_package

    package = find_package(base)
    if package is not None and package.path() is not None:
        return str(package.path())
    raise click.BadParameter(f"no model folder for {base!r} (a path, or a name under --models-dir)", param_hint="--base")


@click.command("train")
@click.option("--base", required=True, help="Base model: a folder, or a name under --models-dir.")
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Training pairs: TSV (query<TAB>passage) or JSONL ({anchor, positive, negative?}).")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Held-out pairs for MRR@10 / recall@1 (default: 10% carved from --data).")
@click.option("--method", type=click.Choice(["full", "lora", "qlora"]), default="full", show_default=True)
@click.option("--name", required=True, help="Name of the resulting model (a folder under --models-dir).")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("models"),
              show_default=True)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--warmup-ratio", type=float, default=None)
@click.option("--lora-r", type=int, default=None)
@click.option("--lora-alpha", type=int, default=None)
@click.option("--lora-dropout", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=1, show_default=True, help="Torch threads of the training process.")
def train_command(base, data, validation, method, name, models_dir, threads, **hyper) -> None:
    """Fine-tune a model on query/passage pairs (MultipleNegativesRankingLoss)."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise click.BadParameter("a plain name, not a path", param_hint="--name")
    output = models_dir / name
    if output.exists():
        raise click.BadParameter(f"{output} already exists", param_hint="--name")
    if method == "qlora":
        ok, reason = qlora_support()
        if not ok:
            raise click.UsageError(f"--method qlora is not supported here: {reason}")
    parsed = read_file(data)
    if not parsed.pairs:
        raise click.UsageError(f"{data}: no valid pairs ({parsed.ignored} lines ignored)")
    held = read_file(validation).pairs if validation else None
    click.echo(f"{len(parsed.pairs)} pairs ({parsed.ignored} lines ignored)")
    base_dir = _resolve_base(base, models_dir)
    with tempfile.TemporaryDirectory(prefix="embedserve-train-") as tmp:
        job_dir = Path(tmp)
        prepare_job(
            job_id=uuid.uuid4().hex, job_dir=job_dir, name=name, base_model=base_dir, base_name=base, method=method,
            train=parsed.pairs, validation=held, output_dir=output.resolve(),
            hyperparameters=defaults_for(method, **hyper), threads=threads,
        )
        with (job_dir / "log.txt").open("w") as log:
            process = subprocess.Popen([sys.executable, "-m", "embedserve.training.run", str(job_dir)],
                                       stdout=log, stderr=subprocess.STDOUT)
            code = _follow(process, job_dir / "events.jsonl")
        if code != 0:
            events = read_events(job_dir / "events.jsonl")
            error = next((e.error for e in reversed(events) if e.type == "failed"), None)
            tail = (job_dir / "log.txt").read_text()[-2000:]
            raise click.ClickException(f"training failed: {error or tail}")


def _follow(process: subprocess.Popen, events_file: Path) -> int:
    """Show progress from the events file until the process exits; returns its exit code."""
    from tqdm import tqdm

    bar = None
    seen = 0
    while True:
        done = process.poll() is not None
        events = read_events(events_file)
        for event in events[seen:]:
            if event.type == "progress":
                if bar is None:
                    bar = tqdm(total=event.total_steps, unit="step", desc="training")
                bar.update((event.step or 0) - bar.n)
                bar.set_postfix(loss=f"{event.loss:.4f}", epoch=f"{event.epoch:.2f}")
            elif event.type == "metrics":
                if bar is not None:
                    bar.close()
                m = event.metrics or {}
                click.echo(f"{event.stage}: MRR@10 {m.get('mrr@10', 0):.4f}  recall@1 {m.get('recall@1', 0):.4f}")
            elif event.type == "completed":
                click.echo(f"model saved to {event.message}")
            elif event.type in ("started", "message"):
                click.echo(event.message)
        seen = len(events)
        if done:
            if bar is not None:
                bar.close()  # closing twice is harmless
            return process.returncode
        time.sleep(0.5)

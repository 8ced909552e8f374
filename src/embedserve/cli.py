"""The `embedserve` command. Every Settings field is a flag of `serve`, generated from the
settings model itself so the two can never drift apart."""

from __future__ import annotations

import json
import types
import typing
import urllib.request
from pathlib import Path

import click
from pydantic import ValidationError

from embedserve import __version__
from embedserve.server import run_server
from embedserve.settings import Settings

# Flags whose natural CLI name is singular because they repeat.
REPEATED_FLAG = {"models": "model", "cors_origins": "cors-origin", "api_keys": "api-key", "model_aliases": "model-alias"}


def _click_option(name: str, field) -> click.Option:
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        annotation = args[0]
        origin, args = typing.get_origin(annotation), list(typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, origin, args = args[0], typing.get_origin(args[0]), list(typing.get_args(args[0]))
    flag = REPEATED_FLAG.get(name, name.replace("_", "-"))
    env = f"EMBEDSERVE_{name.upper()}"
    default = field.default
    shown = ",".join(default) if isinstance(default, tuple) else default
    help_text = f"{field.description} [env {env}; default {shown}]"
    if annotation is bool:
        return click.Option([f"--{flag}/--no-{flag}", name], default=None, help=help_text)
    if origin is tuple:
        return click.Option([f"--{flag}", name], multiple=True, default=None, help=help_text)
    if origin is typing.Literal:
        return click.Option([f"--{flag}", name], type=click.Choice([str(a) for a in args]), default=None, help=help_text)
    kind = {int: int, float: float, Path: click.Path(path_type=Path)}.get(annotation, str)
    return click.Option([f"--{flag}", name], type=kind, default=None, help=help_text)


def build_settings(**overrides) -> Settings:
    """Env first, then any flag given on the command line."""
    given = {k: v for k, v in overrides.items() if v is not None and v != ()}
    return Settings(**given)


def load_env_file(path: Path = Path(".env")) -> bool:
    """Variables from a .env file (HF_TOKEN for gated models, EMBEDSERVE_*), never overriding the environment."""
    from dotenv import load_dotenv

    return path.is_file() and load_dotenv(path, override=False)


def _serve(**flags) -> None:
    load_env_file()
    try:
        settings = build_settings(**flags)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    run_server(settings)


def settings_error(exc: ValidationError) -> str:
    """What was wrong, without the values given: pydantic's own text echoes every input, API keys included."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"{where}: {error['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _models(url: str | None) -> None:
    from embedserve.models.packages import KNOWN_PACKAGES

    settings = Settings()
    click.echo("Installed model packages:")
    for package in KNOWN_PACKAGES:
        folder = package.path()
        click.echo(f"  {package.hub_id:45s} {'installed at ' + str(folder) if folder else 'not installed'}")
    if settings.models_dir is not None:
        click.echo(f"Models in {settings.models_dir}:")
        for child in sorted(p for p in settings.models_dir.iterdir() if p.is_dir()):
            click.echo(f"  {child.name}")
    try:
        from huggingface_hub import scan_cache_dir

        repos = [r for r in scan_cache_dir().repos if r.repo_type == "model"]
    except Exception:  # noqa: BLE001 - no cache is not an error here
        repos = []
    click.echo("Hugging Face cache:" + ("" if repos else " (empty)"))
    for repo in sorted(repos, key=lambda r: r.repo_id):
        click.echo(f"  {repo.repo_id}")
    if url:
        with urllib.request.urlopen(url.rstrip("/") + "/v1/models", timeout=10) as response:
            loaded = json.load(response)["data"]
        click.echo(f"Loaded in {url}:")
        for card in loaded:
            click.echo(f"  {card['id']}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="embedserve")
def app() -> None:
    """embedserve: self-hosted text-embedding inference server."""


app.add_command(
    click.Command(
        "serve",
        callback=_serve,
        params=[_click_option(name, field) for name, field in Settings.model_fields.items()],
        help="Run the HTTP server.",
    )
)


@app.command("models")
@click.option("--url", default=None, help="Also list the models loaded in a running server at this URL.")
def models_command(url: str | None) -> None:
    """List models that can be served here, and (with --url) those loaded in a server."""
    _models(url)


def _train_command() -> click.Command:
    """`embedserve train`; importing it loads no torch (training runs in its own process)."""
    from embedserve.training.cli_train import train_command

    return train_command


app.add_command(_train_command())


def _corpus_command() -> click.Command:
    """`embedserve embed-corpus`; its engine, pyarrow and Ray load only when it runs."""
    from embedserve.corpus.command import corpus_command

    return corpus_command(_click_option)


app.add_command(_corpus_command())


if __name__ == "__main__":
    app()

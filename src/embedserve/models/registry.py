"""Resolve a model name to a folder of weights.

Sources, first match wins: a local folder path; an installed model package; a sub-folder
of `models_dir`; the Hugging Face Hub (download or local cache, honouring HF_TOKEN,
revision and HF_HUB_OFFLINE). The resolved model also gets the aliases a client may use
for it, so `all-MiniLM-L6-v2` and `sentence-transformers/all-MiniLM-L6-v2` are one model.

The operator's names (`--model`) may be anything. A name from a request is resolved with
`paths=False` (unless --allow-request-paths): it must have the Hub id grammar before the
disk or the network is touched, so it can never be a path, climb out of `models_dir` or
resolve against the working directory; `hub=False` keeps it off the Hub (not in
--allow-models, or on-demand loading off). Messages quote the client's name, never a path
of this server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedserve.errors import ModelNotFound, shown
from embedserve.models import hub
from embedserve.models.packages import find_package

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    id: str
    path: Path
    source: str  # "path" | "package" | "models_dir" | "hub"
    aliases: frozenset[str]


def aliases_for(name: str) -> frozenset[str]:
    """Names a client may use: the id itself and its last path component."""
    stripped = name.rstrip("/")
    return frozenset({name, stripped, stripped.split("/")[-1]})


class ModelResolver:
    def __init__(
        self,
        *,
        models_dir: Path | None = None,
        revision: str | None = None,
        hub_download: Callable[..., Path] = hub.download_from_hub,
    ):
        self.models_dir = models_dir
        self.revision = revision
        self._hub_download = hub_download

    def resolve(self, name: str, *, paths: bool = True, hub_allowed: bool = True) -> ResolvedModel:
        """The model `name` stands for. `paths`: may it be a local folder; `hub_allowed`: may it come from the Hub."""
        name = name.strip()
        if not name:
            raise ModelNotFound("model name is empty", param="model")
        is_id = hub.looks_like_repo_id(name)
        if paths and (local := local_folder(name)) is not None:
            return ResolvedModel(name, local, "path", aliases_for(name))
        if not is_id and not paths:
            # Not quoted back: it may be a path, and no answer should read like one of this server's.
            raise ModelNotFound(
                "the model name given is not served here, and it is not a model name: names look like 'name' or "
                "'org/name' (letters, digits, '-', '_', '.', at most 96 characters each); folders are not accepted "
                "from requests",
                param="model",
            )
        package = find_package(name)
        if package is not None and (folder := package.path()) is not None:
            aliases = aliases_for(package.hub_id) | {name}
            return ResolvedModel(package.hub_id, folder, "package", aliases)
        if self.models_dir is not None and is_id:
            for candidate in self._models_dir_candidates(name):
                if candidate.is_dir():
                    return ResolvedModel(name, candidate.resolve(), "models_dir", aliases_for(name))
        if not is_id:
            raise ModelNotFound(f"model {shown(name)} is not a local folder, a known model or a Hub id", param="model")
        if not hub_allowed:
            raise ModelNotFound(
                f"model {shown(name)} is not served here, and this server does not load it from the Hugging Face Hub",
                param="model",
            )
        try:
            folder = self._hub_download(name, revision=self.revision)
        except hub.HubModelNotFound as exc:
            error = ModelNotFound(f"model {shown(name)} could not be found: {exc.public}", param="model")
            error.detail = str(exc)
            raise error from exc
        return ResolvedModel(name, Path(folder), "hub", aliases_for(name))

    def _models_dir_candidates(self, name: str) -> list[Path]:
        """Where `name` may live under models_dir (callers pass Hub-id-shaped names only)."""
        assert self.models_dir is not None
        base = self.models_dir
        # org/name, the Hub cache's org--name, the Embedding Service's org_name (its ./models/<name with / as _>), name
        parts = [name, name.replace("/", "--"), name.replace("/", "_"), name.rstrip("/").split("/")[-1]]
        out = []
        for part in parts:
            candidate = (base / part).resolve()
            # never let a name like ../../etc escape the models folder
            if candidate.is_relative_to(base.resolve()):
                out.append(candidate)
        return out


def local_folder(name: str) -> Path | None:
    """The folder `name` points to (with ~ expanded), resolved, or None. Never raises: a name too
    long for the filesystem, with a NUL byte, or an unknown ~user is simply not a folder."""
    try:
        local = Path(name).expanduser()
        return local.resolve() if local.is_dir() else None
    except (OSError, RuntimeError, ValueError):
        return None

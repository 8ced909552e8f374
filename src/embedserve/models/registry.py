"""Resolve a model name to a folder of weights.

Sources, first match wins: a local folder path; an installed model package; a sub-folder
of `models_dir`; the Hugging Face Hub (download or local cache, honouring HF_TOKEN,
revision and HF_HUB_OFFLINE). The resolved model also gets the aliases a client may use
for it, so `all-MiniLM-L6-v2` and `sentence-transformers/all-MiniLM-L6-v2` are one model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedserve.errors import ModelNotFound
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

    def resolve(self, name: str) -> ResolvedModel:
        name = name.strip()
        if not name:
            raise ModelNotFound("model name is empty", param="model")
        local = Path(name).expanduser()
        if local.is_dir():
            return ResolvedModel(name, local.resolve(), "path", aliases_for(name))
        package = find_package(name)
        if package is not None and (folder := package.path()) is not None:
            aliases = aliases_for(package.hub_id) | {name}
            return ResolvedModel(package.hub_id, folder, "package", aliases)
        if self.models_dir is not None:
            for candidate in self._models_dir_candidates(name):
                if candidate.is_dir():
                    return ResolvedModel(name, candidate.resolve(), "models_dir", aliases_for(name))
        if not hub.looks_like_repo_id(name):
            raise ModelNotFound(f"model '{name}' is not a local folder, a known model or a Hub id", param="model")
        try:
            folder = self._hub_download(name, revision=self.revision)
        except hub.HubModelNotFound as exc:
            raise ModelNotFound(f"model '{name}' could not be found: {exc}", param="model") from exc
        return ResolvedModel(name, Path(folder), "hub", aliases_for(name))

    def _models_dir_candidates(self, name: str) -> list[Path]:
        assert self.models_dir is not None
        base = self.models_dir
        parts = [name, name.replace("/", "--"), name.rstrip("/").split("/")[-1]]
        out = []
        for part in parts:
            candidate = (base / part).resolve()
            # never let a name like ../../etc escape the models folder
            if candidate.is_relative_to(base.resolve()):
                out.append(candidate)
        return out

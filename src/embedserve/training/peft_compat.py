"""Let transformers' PEFT integration run with the peft release that is installable here.

transformers 5.25 refuses every adapter call (`add_adapter`, `load_adapter`, loading a folder
with `adapter_config.json`) unless peft >= 0.22.0, but the newest peft on our package index is
0.21.2. The calls themselves only use `inject_adapter_in_model`, `PeftConfig` and state-dict
helpers that 0.21.2 has, and a LoRA adapter trained, saved and loaded back through
sentence-transformers with the check relaxed reproduces its embeddings exactly (tested in
tests/unit/training/test_peft_compat.py). So the check is relaxed for peft 0.21.x only; with
peft >= 0.22 this does nothing. Import-time side effect on purpose: anything that loads or trains
an adapter model (the trainer, the server's model loader) calls `ensure()` first.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["ensure"]

_done = False


def _peft_version() -> tuple[int, ...] | None:
    try:
        return tuple(int(x) for x in version("peft").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return None


def ensure() -> bool:
    """Relax transformers' peft version check when peft is 0.21.x; True when it was relaxed."""
    global _done
    if _done:
        return True
    if _peft_version() != (0, 21):
        return False
    import transformers.integrations.peft as integration

    original = integration.check_peft_version

    def check(min_version: str) -> None:
        if min_version == "0.22.0":
            return
        original(min_version=min_version)

    integration.check_peft_version = check
    _done = True
    return True

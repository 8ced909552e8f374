"""Fetch a model from the Hugging Face Hub into the local HF cache, and nothing more.

Why a wrapper around ``huggingface_hub.snapshot_download``:

* A Hub repo often carries the same weights several times (ONNX, OpenVINO, TF, Flax,
  Rust, ``.bin`` next to ``.safetensors``). We only load with torch, so we fetch the
  config/tokenizer files plus *one* weight format: safetensors, or ``pytorch_model*.bin``
  only when the repo has no safetensors. That keeps start-up downloads small.
* huggingface_hub raises a zoo of exceptions (and ``HF_HUB_OFFLINE`` is read once, at its
  import). We decide offline mode ourselves, pass ``local_files_only`` explicitly, and turn
  every failure into one ``HubModelNotFound`` whose message says what to do next.
* A string that is not shaped like a Hub id (``../x``, ``my model``) is rejected before any
  network call, so a mistyped local path never turns into a confusing 404.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub import snapshot_download

# Everything a sentence-transformers / transformers text model needs, except weights.
# fnmatch's "*" also matches "/", so these cover module subfolders (1_Pooling/, 2_Dense/).
# BGE-M3's sparse and ColBERT heads (models/tasks.py) are weights of their own, beside the encoder's.
_CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "sparse_linear.pt", "colbert_linear.pt"]
_SAFETENSORS_PATTERNS = ["*.safetensors"]
_BIN_PATTERNS = ["*pytorch_model*.bin"]  # incl. shards and 2_Dense/pytorch_model.bin
# Other runtimes' folders/weights: never fetched, even if a pattern above would match.
_IGNORE_PATTERNS = ["onnx/*", "openvino/*", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack",
                    "*.ot", "tf_model*", "flax_model*", "rust_model*"]

_NAME = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"(?:{_NAME}/)?{_NAME}", re.ASCII)
_TRUE = {"1", "true", "yes", "on"}
# Transport errors of whichever HTTP client huggingface_hub uses (httpx2 in 2.x).
_NETWORK_ERRORS = (ConnectionError, TimeoutError, getattr(hf_errors, "HTTPError", OSError))


class HubModelNotFound(Exception):
    """The model could not be resolved from the Hub or the local cache; the message says why.

    `public` says the same to a client: no path of this server, no library error text.
    """

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public or message


def hub_token(env: Mapping[str, str] | None = None) -> str | None:
    """HF_TOKEN, else HUGGING_FACE_HUB_TOKEN (legacy name), else None. Blank counts as unset."""
    env = os.environ if env is None else env
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    """True when HF_HUB_OFFLINE is set to 1/true/yes/on (any case). Read now, not at import."""
    env = os.environ if env is None else env
    return (env.get("HF_HUB_OFFLINE") or "").strip().lower() in _TRUE


def looks_like_repo_id(s: object) -> bool:
    """Whether ``s`` is shaped like ``name`` or ``org/name`` (same rules as the Hub's validator)."""
    return (
        isinstance(s, str)
        and _REPO_ID_RE.fullmatch(s) is not None
        and "--" not in s
        and ".." not in s
        and not s.endswith(".git")
    )


def _has_weights(folder: Path, patterns: list[str]) -> bool:
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).as_posix()
        if (path.is_file() and any(fnmatch(rel, p) for p in patterns)
                and not any(fnmatch(rel, p) for p in _IGNORE_PATTERNS)):
            return True
    return False


def _explain(exc: BaseException, repo_id: str, revision: str | None, offline: bool,
             cache: Path | None) -> str:
    """Turn a huggingface_hub failure into a message that tells the user what to do.

    With `cache=None`, the version a client may read: no path, no library error text.
    """
    repo = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(exc, hf_errors.GatedRepoError):  # subclass of RepositoryNotFoundError: first
        return (f"{repo} is a gated repo: accept its terms on https://huggingface.co/"
                f"{repo_id} and set HF_TOKEN to a token of that account.")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return (f"{repo} was not found on the Hub. Check the id; if the repo is private, "
                "set HF_TOKEN to a token that can read it.")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return f"{repo}: no such revision (branch, tag or commit) on the Hub."
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = " Set HF_TOKEN to a valid token." if status in (401, 403) else ""
        if cache is None:
            return f"{repo}: the Hub answered HTTP {status}.{hint}"
        return f"{repo}: the Hub answered HTTP {status}: {str(exc).rstrip('.')}.{hint}"
    if offline or isinstance(exc, hf_errors.OfflineModeIsEnabled):
        if cache is None:
            return f"{repo} is not in the server's local cache and it does not download models (offline mode)."
        return (f"{repo} is not in the local cache at {cache} (or is incomplete there) and "
                "offline mode is on (HF_HUB_OFFLINE). Unset HF_HUB_OFFLINE to download it, "
                "or download it once on a machine with network access into that cache.")
    if cache is None:
        return f"{repo} could not be downloaded from the Hub and is not in the server's local cache."
    return (f"{repo} could not be downloaded from the Hub and is not in the local cache at "
            f"{cache}: {type(exc).__name__}: {str(exc).rstrip('.')}. "
            "Check the network (or HF_ENDPOINT / proxy).")


def download_from_hub(repo_id: str, *, revision: str | None = None, token: str | None = None,
                      cache_dir: str | Path | None = None, offline: bool | None = None) -> Path:
    """Return the local snapshot folder of ``repo_id`` at ``revision``, downloading it if needed.

    Tries safetensors first; only when the snapshot then holds no weights does it fetch
    ``pytorch_model*.bin``. Offline, the cached snapshot is returned as-is (no network).
    """
    if not looks_like_repo_id(repo_id):
        raise HubModelNotFound(f"{repo_id!r} is not a Hugging Face Hub repo id "
                               "(expected 'name' or 'org/name'; letters, digits, '-', '_', '.').")
    offline = is_offline() if offline is None else offline
    token = hub_token() if token is None else token
    cache = Path(cache_dir if cache_dir is not None else hf_constants.HF_HUB_CACHE).expanduser()
    label = f"{repo_id}@{revision}" if revision else repo_id
    folder: Path | None = None
    for weights in (_SAFETENSORS_PATTERNS, _BIN_PATTERNS):
        try:
            folder = Path(snapshot_download(
                repo_id, revision=revision, token=token, cache_dir=cache_dir,
                local_files_only=offline, allow_patterns=_CONFIG_PATTERNS + weights,
                ignore_patterns=_IGNORE_PATTERNS))
        except (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError,
                hf_errors.HFValidationError, *_NETWORK_ERRORS) as exc:
            raise HubModelNotFound(_explain(exc, repo_id, revision, offline, cache),
                                   public=_explain(exc, repo_id, revision, offline, None)) from exc
        if _has_weights(folder, weights):
            return folder
    where = "its cached snapshot" if offline else "the repo"
    hint = " Unset HF_HUB_OFFLINE to download them." if offline else ""
    weights_text = "has no *.safetensors or pytorch_model*.bin weights, so torch cannot load it."
    raise HubModelNotFound(f"{label}: {where} at {folder} {weights_text}{hint}",
                           public=f"{label}: {where} {weights_text}")

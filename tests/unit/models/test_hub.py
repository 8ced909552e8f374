"""Tests for embedserve.models.hub against a real huggingface_hub cache layout on disk.

No test may reach the network: an autouse fixture sets HF_HUB_OFFLINE=1 and makes any
socket connect fail loudly; the Hub-facing tests use offline=True (local_files_only) or
replace snapshot_download with a recorder.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import filter_repo_objects

from embedserve.models import hub
from embedserve.models.hub import (
    HubModelNotFound,
    download_from_hub,
    hub_token,
    is_offline,
    looks_like_repo_id,
)

REPO = "acme/tiny-embedder"
MAIN = "a" * 40
V2 = "b" * 40

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "modules.json": b'[{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]',
    "model.safetensors": b"\x00fake-safetensors",
    "tokenizer.json": b'{"version": "1.0"}',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def make_snapshot(cache: Path, repo_id: str, commit: str, files: dict[str, bytes],
                  ref: str | None = None) -> Path:
    """Lay out a snapshot exactly like huggingface_hub does: blobs/ + symlinks + refs/."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    for rel, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(blob)
    if ref is not None:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)  # no trailing newline, like the Hub
    return snapshot


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"unit test tried to open a network connection: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "hf-cache"
    make_snapshot(root, REPO, MAIN, FILES, ref="main")
    v2_files = {**FILES, "model.safetensors": b"\x01other-weights", "2_Dense/config.json": b"{}"}
    make_snapshot(root, REPO, V2, v2_files, ref="v2")
    return root


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    """Replace snapshot_download with a fake that records kwargs and returns a full snapshot."""
    calls: list[dict] = []
    folder = make_snapshot(tmp_path / "fake", REPO, MAIN, FILES)

    def fake(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", fake)
    return calls


# --- resolving from the local cache (real snapshot_download, offline) ---------------------


def test_default_revision_returns_main_snapshot(cache):
    folder = download_from_hub(REPO, cache_dir=cache, offline=True)
    assert folder == cache / "models--acme--tiny-embedder" / "snapshots" / MAIN
    assert (folder / "1_Pooling" / "config.json").read_bytes() == FILES["1_Pooling/config.json"]
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]


@pytest.mark.parametrize("revision", ["v2", V2])
def test_named_revision_branch_or_commit(cache, revision):
    folder = download_from_hub(REPO, revision=revision, cache_dir=str(cache), offline=True)
    assert folder.name == V2
    assert (folder / "model.safetensors").read_bytes() == b"\x01other-weights"
    assert (folder / "2_Dense" / "config.json").is_file()


def test_env_offline_used_when_offline_is_none(cache, monkeypatch):
    real = hub.snapshot_download
    seen: list[bool] = []

    def spy(*args, **kwargs):
        seen.append(kwargs["local_files_only"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "snapshot_download", spy)
    folder = download_from_hub(REPO, cache_dir=cache)  # offline=None -> HF_HUB_OFFLINE=1
    assert folder.name == MAIN
    assert seen == [True]


def test_repo_not_in_cache_raises_helpful_error(cache):
    with pytest.raises(HubModelNotFound) as info:
        download_from_hub("acme/not-downloaded", cache_dir=cache, offline=True)
    msg = str(info.value)
    assert "acme/not-downloaded" in msg
    assert "not in the local cache" in msg and str(cache) in msg
    assert "HF_HUB_OFFLINE" in msg
    assert isinstance(info.value.__cause__, hf_errors.LocalEntryNotFoundError)


def test_unknown_revision_offline_raises(cache):
    with pytest.raises(HubModelNotFound, match="not in the local cache"):
        download_from_hub(REPO, revision="no-such-branch", cache_dir=cache, offline=True)


def test_bin_only_snapshot_falls_back_to_pytorch_model_bin(tmp_path):
    files = {k: v for k, v in FILES.items() if k != "model.safetensors"}
    files["pytorch_model.bin"] = b"torch-pickle"
    make_snapshot(tmp_path, "acme/old", MAIN, files, ref="main")
    folder = download_from_hub("acme/old", cache_dir=tmp_path, offline=True)
    assert (folder / "pytorch_model.bin").read_bytes() == b"torch-pickle"


def test_cached_snapshot_without_weights_is_rejected(tmp_path):
    files = {"config.json": b"{}", "onnx/model.onnx": b"onnx", "tf_model.h5": b"tf"}
    make_snapshot(tmp_path, "acme/onnx-only", MAIN, files, ref="main")
    with pytest.raises(HubModelNotFound, match="no \\*.safetensors or pytorch_model"):
        download_from_hub("acme/onnx-only", cache_dir=tmp_path, offline=True)


# --- env helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_TOKEN": "hf_new", "HUGGING_FACE_HUB_TOKEN": "hf_old"}, "hf_new"),
        ({"HUGGING_FACE_HUB_TOKEN": "hf_old"}, "hf_old"),
        ({"HF_TOKEN": "  ", "HUGGING_FACE_HUB_TOKEN": "hf_old"}, "hf_old"),
        ({}, None),
    ],
)
def test_hub_token_precedence(env, expected):
    assert hub_token(env) == expected


def test_hub_token_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_legacy")
    assert hub_token() == "hf_legacy"
    monkeypatch.setenv("HF_TOKEN", "hf_primary")
    assert hub_token() == "hf_primary"


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on"])
def test_is_offline_truthy(value):
    assert is_offline({"HF_HUB_OFFLINE": value}) is True


@pytest.mark.parametrize("env", [{}, {"HF_HUB_OFFLINE": ""}, {"HF_HUB_OFFLINE": "0"},
                                 {"HF_HUB_OFFLINE": "false"}])
def test_is_offline_falsy(env):
    assert is_offline(env) is False


def test_is_offline_reads_os_environ_at_call_time(monkeypatch):
    assert is_offline() is True  # set by the autouse fixture
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert is_offline() is False


# --- what is passed to snapshot_download --------------------------------------------------------


def test_explicit_token_and_args_passed_through(recorder, tmp_path):
    folder = download_from_hub(REPO, revision="v2", token="hf_explicit", cache_dir=tmp_path,
                               offline=False)
    assert (folder / "model.safetensors").is_file()
    assert len(recorder) == 1  # safetensors found: no .bin retry
    call = recorder[0]
    assert call["repo_id"] == REPO and call["revision"] == "v2"
    assert call["token"] == "hf_explicit"
    assert call["cache_dir"] == tmp_path
    assert call["local_files_only"] is False


def test_env_token_used_when_token_is_none(recorder, monkeypatch):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_from_env")
    download_from_hub(REPO, offline=True)
    assert recorder[0]["token"] == "hf_from_env"
    assert recorder[0]["local_files_only"] is True


def test_allow_patterns_select_only_torch_model_files(recorder):
    download_from_hub(REPO, offline=True)
    call = recorder[0]
    repo_files = [
        "config.json", "modules.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        "merges.txt", "sentencepiece.bpe.model", "model.safetensors", "1_Pooling/config.json",
        "2_Dense/model.safetensors", "pytorch_model.bin", "onnx/model.onnx", "onnx/config.json",
        "openvino/openvino_model.xml", "tf_model.h5", "flax_model.msgpack", "rust_model.ot",
        "README.md", "sparse_linear.pt", "colbert_linear.pt", "optimizer.pt",  # BGE-M3's heads; a training leftover
    ]
    kept = set(filter_repo_objects(repo_files, allow_patterns=call["allow_patterns"],
                                   ignore_patterns=call["ignore_patterns"]))
    assert kept == {
        "config.json", "modules.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        "merges.txt", "sentencepiece.bpe.model", "model.safetensors", "1_Pooling/config.json",
        "2_Dense/model.safetensors", "sparse_linear.pt", "colbert_linear.pt",
    }


def test_bin_retry_patterns(monkeypatch, tmp_path):
    """Online, a repo without safetensors gets a second call that allows pytorch_model*.bin."""
    folder = tmp_path / "snap"
    calls: list[dict] = []

    def fake(repo_id, **kwargs):
        calls.append(kwargs)
        if len(calls) == 2:  # the .bin call "downloads" the weights
            (folder / "pytorch_model.bin").write_bytes(b"w")
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}")
        return str(folder)

    folder.mkdir()
    monkeypatch.setattr(hub, "snapshot_download", fake)
    assert download_from_hub(REPO, offline=False) == folder
    assert len(calls) == 2
    assert "*.safetensors" in calls[0]["allow_patterns"]
    assert not any(p.endswith(".bin") for p in calls[0]["allow_patterns"])
    assert any(p.endswith(".bin") for p in calls[1]["allow_patterns"])


# --- repo id validation -----------------------------------------------------------------------


@pytest.mark.parametrize("good", ["bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2",
                                  "BAAI/bge-small-en-v1.5", "org_1/model.v2", "x"])
def test_looks_like_repo_id_accepts(good):
    assert looks_like_repo_id(good)


BAD_IDS = ["", "../x", "./model", "/abs/path", "a/b/c", "org/my model", "org/", "/name",
           "org--x/y", "org/na..me", "-lead/x", "org/trail-", "org/x.git", "org/naïve",
           "a" * 97, "org/x\n"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_looks_like_repo_id_rejects(bad):
    assert not looks_like_repo_id(bad)


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_repo_id_rejected_before_snapshot_download(recorder, bad):
    with pytest.raises(HubModelNotFound, match="not a Hugging Face Hub repo id"):
        download_from_hub(bad, offline=False)
    assert recorder == []


# --- error mapping ------------------------------------------------------------------------------


def _response(status: int) -> httpx2.Response:
    return httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/{REPO}"))


def _raising(monkeypatch, exc: BaseException) -> None:
    def fake(repo_id, **kwargs):
        raise exc

    monkeypatch.setattr(hub, "snapshot_download", fake)


def test_gated_repo_mentions_hf_token(monkeypatch):
    error = hf_errors.GatedRepoError("Access to model is restricted.", response=_response(403))
    _raising(monkeypatch, error)
    with pytest.raises(HubModelNotFound) as info:
        download_from_hub(REPO, offline=False)
    assert "gated" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert f"https://huggingface.co/{REPO}" in str(info.value)
    assert info.value.__cause__ is error


def test_repo_not_found_on_hub(monkeypatch):
    _raising(monkeypatch, hf_errors.RepositoryNotFoundError("404", response=_response(404)))
    with pytest.raises(HubModelNotFound, match="not found on the Hub.*HF_TOKEN"):
        download_from_hub(REPO, offline=False)


def test_revision_not_found(monkeypatch):
    _raising(monkeypatch, hf_errors.RevisionNotFoundError("404", response=_response(404)))
    with pytest.raises(HubModelNotFound, match=f"{REPO}@nope: no such revision"):
        download_from_hub(REPO, revision="nope", offline=False)


def test_server_error(monkeypatch):
    _raising(monkeypatch, hf_errors.HfHubHTTPError("boom", response=_response(503)))
    with pytest.raises(HubModelNotFound, match="HTTP 503"):
        download_from_hub(REPO, offline=False)


@pytest.mark.parametrize("exc", [ConnectionError("refused"), TimeoutError("slow"),
                                 httpx2.ConnectError("dns failure"),
                                 hf_errors.LocalEntryNotFoundError("not cached, hub down")])
def test_network_errors_online(monkeypatch, tmp_path, exc):
    _raising(monkeypatch, exc)
    with pytest.raises(HubModelNotFound) as info:
        download_from_hub(REPO, cache_dir=tmp_path, offline=False)
    msg = str(info.value)
    assert "could not be downloaded" in msg and str(tmp_path) in msg and "network" in msg
    assert info.value.__cause__ is exc


def test_offline_mode_error_from_hub_library(monkeypatch):
    _raising(monkeypatch, hf_errors.OfflineModeIsEnabled("offline"))
    with pytest.raises(HubModelNotFound, match="offline mode is on"):
        download_from_hub(REPO, offline=False)

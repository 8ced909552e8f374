"""The on-disk cache of exported ONNX graphs (embedserve.backends.onnx_export).

GraphCache: an entry appears whole or not at all, is reused, can be invalidated, and two
builders racing for one key both end up with a complete entry. cache_key: a different key
whenever what the graph is built from changes (weights, config, tokenizer, export settings,
library versions), the same key otherwise. Last, OnnxBackend on a tiny real model (no real
weights, about a second): the second start is a cache hit, the int8 layer choice is cached.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from embedserve.backends import onnx_export
from embedserve.backends.onnx_export import GraphCache, cache_key

KEY = "0123456789abcdef01234567"


def write_graph(content: str = "graph"):
    calls: list[Path] = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "model.onnx").write_text(content)

    build.calls = calls
    return build


def leftovers(cache: GraphCache) -> list[str]:
    """Anything under the cache's onnx folder other than finished entries."""
    return sorted(p.name for p in cache.entry(KEY).parent.iterdir() if not (p / "meta.json").is_file())


# ---- GraphCache ---------------------------------------------------------------------------


def test_first_use_builds_the_entry_in_a_scratch_folder_then_publishes_it(tmp_path):
    cache = GraphCache(tmp_path / "cache")
    seen_during_build = {}

    def build(folder: Path) -> None:
        seen_during_build["entry exists"] = cache.entry(KEY).exists()
        seen_during_build["folder"] = folder
        (folder / "model.onnx").write_bytes(b"graph bytes")

    folder, hit = cache.get_or_build(KEY, build)
    assert hit is False and folder == cache.entry(KEY) == tmp_path / "cache" / "onnx" / KEY
    assert seen_during_build["entry exists"] is False  # nobody can open a half-written entry
    assert seen_during_build["folder"] != folder and seen_during_build["folder"].parent == folder.parent
    assert (folder / "model.onnx").read_bytes() == b"graph bytes"
    assert json.loads((folder / "meta.json").read_text()) == {"key": KEY}
    assert leftovers(cache) == [] and not seen_during_build["folder"].exists()


def test_a_build_abandoned_long_ago_is_cleared_and_a_recent_one_kept(tmp_path):
    cache = GraphCache(tmp_path)
    parent = cache.entry(KEY).parent
    parent.mkdir(parents=True)
    abandoned, recent = parent / f".{KEY}-killed", parent / f".{KEY}-running"
    for scratch in (abandoned, recent):
        scratch.mkdir()
        (scratch / "model.onnx").write_text("half a graph")
    old = time.time() - onnx_export.ABANDONED_BUILD_SECONDS - 60
    os.utime(abandoned, (old, old))
    cache.get_or_build(KEY, write_graph())
    assert leftovers(cache) == [f".{KEY}-running"]  # another process may still be writing that one


def test_a_finished_entry_is_reused_without_building(tmp_path):
    cache = GraphCache(tmp_path)
    first = write_graph("first")
    folder, hit = cache.get_or_build(KEY, first)
    assert hit is False and len(first.calls) == 1

    second = write_graph("second")
    again, hit = cache.get_or_build(KEY, second)
    assert (again, hit) == (folder, True)
    assert second.calls == []
    assert (again / "model.onnx").read_text() == "first"

    # A new cache object on the same folder (a restarted server) finds it too.
    assert GraphCache(tmp_path).get_or_build(KEY, second) == (folder, True) and second.calls == []


@pytest.mark.parametrize("error", [RuntimeError("export failed"), KeyboardInterrupt()])
def test_a_failed_build_leaves_nothing_behind_and_is_retried_next_time(tmp_path, error):
    cache = GraphCache(tmp_path)

    def build(folder: Path) -> None:
        (folder / "model.onnx").write_text("half a graph")
        raise error

    with pytest.raises(type(error)):
        cache.get_or_build(KEY, build)
    assert not cache.entry(KEY).exists()
    assert leftovers(cache) == []

    retry = write_graph("whole graph")
    folder, hit = cache.get_or_build(KEY, retry)
    assert hit is False and len(retry.calls) == 1 and (folder / "model.onnx").read_text() == "whole graph"


def test_invalidate_removes_only_that_entry_and_the_next_use_rebuilds(tmp_path):
    cache = GraphCache(tmp_path)
    other = "f" * 24
    cache.get_or_build(KEY, write_graph("old"))
    cache.get_or_build(other, write_graph("other"))

    cache.invalidate(KEY)
    assert not cache.entry(KEY).exists()
    assert (cache.entry(other) / "model.onnx").read_text() == "other"

    rebuild = write_graph("new")
    folder, hit = cache.get_or_build(KEY, rebuild)
    assert hit is False and len(rebuild.calls) == 1 and (folder / "model.onnx").read_text() == "new"
    assert cache.get_or_build(other, write_graph("x"))[1] is True


def test_invalidating_a_missing_entry_is_harmless(tmp_path):
    cache = GraphCache(tmp_path)
    cache.invalidate(KEY)
    cache.invalidate(KEY)
    assert not cache.entry(KEY).exists()


def test_when_another_process_publishes_first_its_entry_is_kept(tmp_path):
    cache = GraphCache(tmp_path)

    def build(folder: Path) -> None:
        (folder / "model.onnx").write_text("ours")
        # Meanwhile another server finished the same key.
        theirs = cache.entry(KEY)
        theirs.mkdir()
        (theirs / "model.onnx").write_text("theirs")
        (theirs / "meta.json").write_text(json.dumps({"key": KEY}))

    folder, hit = cache.get_or_build(KEY, build)
    assert folder == cache.entry(KEY) and hit is False
    assert (folder / "model.onnx").read_text() == "theirs"
    assert leftovers(cache) == []
    assert cache.get_or_build(KEY, write_graph())[1] is True


def test_two_builders_racing_for_one_key_both_get_a_complete_entry(tmp_path):
    cache = GraphCache(tmp_path)
    both_building = threading.Barrier(2, timeout=10)
    results, errors = [], []

    def build(folder: Path) -> None:
        both_building.wait()  # neither publishes before the other has started
        (folder / "model.onnx").write_text(f"graph from {threading.current_thread().name}")

    def run() -> None:
        try:
            results.append(cache.get_or_build(KEY, build))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, name=f"builder-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert [r[0] for r in results] == [cache.entry(KEY)] * 2
    folder = cache.entry(KEY)
    assert (folder / "model.onnx").read_text() in {"graph from builder-0", "graph from builder-1"}
    assert json.loads((folder / "meta.json").read_text()) == {"key": KEY}
    assert leftovers(cache) == []


def test_an_entry_without_meta_is_not_trusted_and_is_replaced(tmp_path):
    cache = GraphCache(tmp_path)
    stale = cache.entry(KEY)
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_text("truncated")

    folder, hit = cache.get_or_build(KEY, write_graph("fresh"))
    assert hit is False
    assert (folder / "model.onnx").read_text() == "fresh"


def test_the_cache_folder_may_start_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = GraphCache(Path("~/graphs"))
    folder, _ = cache.get_or_build(KEY, write_graph())
    assert folder == tmp_path / "graphs" / "onnx" / KEY and (folder / "model.onnx").is_file()


# ---- cache_key ----------------------------------------------------------------------------

SETTINGS = {"dtype": "fp32", "inputs": ["input_ids", "attention_mask", "token_type_ids"]}


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"hidden_size": 32}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (folder / "README.md").write_text("# a model\n")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


def rewrite(file: Path, data: bytes, *, keep_mtime: bool = False) -> None:
    stat = file.stat()
    file.write_bytes(data)
    if keep_mtime:
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def model(tmp_path) -> Path:
    return make_model(tmp_path / "models" / "acme--encoder")


def test_the_key_is_stable_for_an_unchanged_model(model):
    key = cache_key(model, SETTINGS)
    assert len(key) == 24 and all(c in "0123456789abcdef" for c in key)
    assert cache_key(model, dict(reversed(SETTINGS.items()))) == key  # order of the settings doesn't matter
    assert cache_key(Path(str(model) + "/"), SETTINGS) == key


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: rewrite(m / "model.safetensors", b"\1" * 64), id="weights rewritten, same size"),
        pytest.param(lambda m: rewrite(m / "model.safetensors", b"\0" * 65, keep_mtime=True), id="weights resized"),
        pytest.param(lambda m: rewrite(m / "config.json", b'{"hidden_size": 64}'), id="config edited"),
        pytest.param(lambda m: rewrite(m / "tokenizer.json", b'{"vocab": {"a": 0}}'), id="tokenizer edited"),
        pytest.param(lambda m: rewrite(m / "vocab.txt", b"[PAD]\n[UNK]\n[CLS]\n"), id="vocab edited"),
        pytest.param(lambda m: rewrite(m / "1_Pooling" / "config.json", b"{}"), id="nested module config"),
        pytest.param(lambda m: (m / "pytorch_model.bin").write_bytes(b"w"), id="weights file added"),
        pytest.param(lambda m: (m / "model.safetensors").unlink(), id="weights file removed"),
    ],
)
def test_the_key_changes_when_the_model_changes(model, change):
    before = cache_key(model, SETTINGS)
    change(model)
    assert cache_key(model, SETTINGS) != before


def test_files_that_do_not_shape_the_graph_leave_the_key_alone(model):
    before = cache_key(model, SETTINGS)
    rewrite(model / "README.md", b"# a model, now documented\n")
    (model / ".cache" / "huggingface").mkdir(parents=True)  # huggingface_hub download metadata
    (model / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("etag")
    (model / ".cache" / "huggingface" / "download.json").write_text("{}")
    assert cache_key(model, SETTINGS) == before


def test_a_model_stored_under_a_dot_cache_folder_is_still_fingerprinted(tmp_path):
    model = make_model(tmp_path / ".cache" / "my-models" / "encoder")
    before = cache_key(model, SETTINGS)
    rewrite(model / "model.safetensors", b"\1" * 64)
    assert cache_key(model, SETTINGS) != before


def test_the_same_files_in_another_folder_get_their_own_entry(tmp_path):
    a = make_model(tmp_path / "a" / "encoder")
    b = make_model(tmp_path / "b" / "encoder")
    assert cache_key(a, SETTINGS) != cache_key(b, SETTINGS)


def test_hub_snapshots_of_different_revisions_get_different_keys(tmp_path):
    snapshots = tmp_path / "models--acme--encoder" / "snapshots"
    first = make_model(snapshots / "1111111111111111111111111111111111111111")
    second = make_model(snapshots / "2222222222222222222222222222222222222222")
    assert onnx_export.model_fingerprint(first)["revision"] == first.name
    assert cache_key(first, SETTINGS) != cache_key(second, SETTINGS)


@pytest.mark.parametrize(
    "other",
    [
        {**SETTINGS, "dtype": "int8"},
        {**SETTINGS, "inputs": ["input_ids", "attention_mask"]},
        {**SETTINGS, "dtype": "int8", "quantization_target": 0.99},
    ],
)
def test_the_key_changes_with_the_export_settings(model, other):
    assert cache_key(model, other) != cache_key(model, SETTINGS)


def test_int8_targets_get_different_keys(model):
    keys = {cache_key(model, {**SETTINGS, "dtype": "int8", "quantization_target": f}) for f in (0.99, 0.995, 0.999)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    "target, value",
    [
        (lambda: (onnx_export.torch, "__version__"), "9.9.9"),
        (lambda: (onnx_export.ort, "__version__"), "9.9.9"),
        (lambda: (onnx_export, "EXPORT_VERSION"), 999),
        (lambda: (onnx_export, "OPSET"), 99),
    ],
    ids=["torch upgraded", "onnxruntime upgraded", "export code changed", "opset changed"],
)
def test_the_key_changes_with_the_toolchain(model, monkeypatch, target, value):
    before = cache_key(model, SETTINGS)
    obj, name = target()
    monkeypatch.setattr(obj, name, value)
    assert cache_key(model, SETTINGS) != before


# ---- OnnxBackend on a tiny real model: what a restart sees --------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from tests.support.tiny_models import build_bert_model

    return build_bert_model(tmp_path_factory.mktemp("tiny") / "acme--tiny-bert")


def embed(backend, texts: list[str]) -> np.ndarray:
    from embedserve.backends.base import Batch

    vectors = backend.embed(Batch.from_ids(backend.tokenize(texts, truncate=True), pad_id=backend.pad_id))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world", "a small red car on the long road"]


def test_a_restart_reuses_the_exported_graph(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    first = OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    second = OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert len(list((tmp_path / "onnx").iterdir())) == 1
    np.testing.assert_allclose(embed(first, TEXTS), embed(second, TEXTS), atol=1e-6)
    assert second.info.fidelity.mean_cosine >= 0.9999


def test_a_corrupt_cached_graph_is_rebuilt(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    good = OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    (graph,) = (tmp_path / "onnx").glob("*/model.onnx")
    graph.write_bytes(b"not an onnx graph" * 100)
    rebuilt = OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    assert rebuilt.cache_hit is False
    assert graph.read_bytes() != b"not an onnx graph" * 100
    np.testing.assert_allclose(embed(rebuilt, TEXTS), embed(good, TEXTS), atol=1e-6)
    assert OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path).cache_hit is True


def test_an_int8_target_is_met_and_the_layers_kept_fp32_are_cached(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    loose = OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=0.5)
    assert loose.fp32_layers == [] and loose.info.dtype == "int8"
    target = min(0.99999, (1 + loose.info.fidelity.mean_cosine) / 2)  # stricter than all-int8 reaches
    assert loose.info.fidelity.mean_cosine < target

    strict = OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=target)
    assert strict.cache_hit is False  # a different target is a different graph
    assert strict.fp32_layers and strict.info.fidelity.mean_cosine >= target
    again = OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=target)
    assert again.cache_hit is True and again.fp32_layers == strict.fp32_layers
    assert again.info.fidelity.mean_cosine == pytest.approx(strict.info.fidelity.mean_cosine, abs=1e-6)


def test_fp32_ignores_the_int8_target(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path, quantization_target=0.99)
    assert OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path, quantization_target=0.999).cache_hit is True


def graph_ops(cache_dir: Path) -> set[str]:
    import onnx

    (graph,) = (cache_dir / "onnx").glob("*/model.onnx")
    return {node.op_type for node in onnx.load(str(graph)).graph.node}


def test_the_fp32_graph_runs_the_exact_gelu_unfused_from_its_bias(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    backend = OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    ops = graph_ops(tmp_path)
    assert "Gelu" in ops and not {"BiasGelu", "FastGelu"} & ops
    assert backend.info.fidelity.min_cosine >= 0.99999  # exact: the reference's vectors


def test_sessions_do_not_fuse_the_bias_back_into_the_gelu(tiny_model, tmp_path):
    import onnx

    from embedserve.backends.onnx_backend import OnnxBackend
    from embedserve.backends.onnx_export import open_session

    OnnxBackend(tiny_model, dtype="fp32", cache_dir=tmp_path)
    (graph,) = (tmp_path / "onnx").glob("*/model.onnx")
    open_session(graph, 1, save_optimized=tmp_path / "as-run.onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "as-run.onnx")).graph.node}
    assert "Gelu" in ops and "BiasGelu" not in ops


def test_int8_quantises_the_optimised_graph(tiny_model, tmp_path):
    from embedserve.backends.onnx_backend import OnnxBackend

    OnnxBackend(tiny_model, dtype="int8", cache_dir=tmp_path, quantization_target=0.5)
    ops = graph_ops(tmp_path)
    assert "Gelu" in ops and ("MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops)

"""`embedserve embed-corpus`: formats, ids and columns, the server's vectors, resume after SIGKILL,
refusal of a changed input or model, Ray Data on a two-node local cluster, and the real default model."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from embedserve.api.app import create_app
from embedserve.cli import app
from embedserve.corpus.shards import MANIFEST
from embedserve.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_bge_m3 import build_bge_m3_hybrid
from tests.support.tiny_models import COMMON_WORDS, build_generic

ENGINE = ["--backend", "torch", "--dtype", "fp32", "--device", "cpu", "--torch-compile", "off"]
TOLERANCE = 1e-6


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(COMMON_WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def write_corpus(path: Path, rows: list[str], ids: list | None = None) -> Path:
    columns = {"text": rows} if ids is None else {"id": ids, "text": rows}
    table = pa.table(columns)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=97)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    else:
        pacsv.write_csv(table, path)
    return path


def embed(*args: str) -> str:
    result = CliRunner().invoke(app, ["embed-corpus", *map(str, args), *ENGINE, "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def read_output(folder: Path) -> pa.Table:
    return pq.read_table(folder)  # _manifest.json and .tmp files are skipped by pyarrow's ignore_prefixes


def dense(table: pa.Table) -> np.ndarray:
    column = table.column("dense").combine_chunks()
    return column.values.to_numpy().reshape(len(column), -1)


def server_vectors(model: Path, inputs: list[str], route: str = "/v1/embeddings") -> list[dict]:
    settings = Settings(models=(str(model),), backend="torch", dtype="fp32", device="cpu", torch_compile="off",
                        load_on_demand=False)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout=60)
        out = []
        for start in range(0, len(inputs), 64):
            r = client.post(route, json={"input": inputs[start : start + 64], "model": str(model)})
            assert r.status_code == 200, r.text
            out.extend(r.json()["data"])
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_generic(tmp_path_factory.mktemp("tiny"), normalize=True)


def test_parquet_jsonl_and_csv_give_the_servers_vectors_with_ids_kept(tiny, tmp_path):
    rows = texts(150)
    ids = [f"doc-{i}" for i in range(150)]
    outputs = {}
    for suffix in (".parquet", ".jsonl", ".csv"):
        source = write_corpus(tmp_path / f"corpus{suffix}", rows, ids)
        out = tmp_path / f"out{suffix.replace('.', '-')}"
        embed(source, out, "--model", tiny, "--shard-size", 64)
        assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "part-00000.parquet", "part-00001.parquet",
                                                         "part-00002.parquet"]
        assert [pq.read_metadata(out / f"part-0000{k}.parquet").num_rows for k in range(3)] == [64, 64, 22]
        outputs[suffix] = read_output(out)
    for table in outputs.values():
        assert table.schema == pa.schema([("id", pa.string()), ("dense", pa.list_(pa.float32(), 32))])
        assert table.column("id").to_pylist() == ids
        assert np.abs(dense(table) - dense(outputs[".parquet"])).max() <= TOLERANCE
    served = np.array([item["embedding"] for item in server_vectors(tiny, rows)], dtype=np.float32)
    assert np.abs(dense(outputs[".parquet"]) - served).max() <= TOLERANCE
    manifest = json.loads((tmp_path / "out-parquet" / MANIFEST).read_text())
    assert manifest["state"] == {"rows": 150, "shards": 3, "finished": True}
    assert manifest["complete"]["2"]["mode"] == "torch fp32"


def test_row_numbers_are_the_ids_without_an_id_column_and_a_rerun_does_nothing(tiny, tmp_path):
    source = write_corpus(tmp_path / "corpus.jsonl", texts(30))
    embed(source, tmp_path / "out", "--model", tiny, "--shard-size", 8)
    table = read_output(tmp_path / "out")
    assert table.schema.field("id").type == pa.int64() and table.column("id").to_pylist() == list(range(30))
    assert "already complete" in embed(source, tmp_path / "out", "--model", tiny, "--shard-size", 8)


def test_sparse_outputs_are_the_servers(tmp_path):
    model = build_bge_m3_hybrid(tmp_path / "models", colbert_dim=16)
    rows = ["hello world again", "the quick brown fox jumps over the lazy dog", "cold rain and snow", "a",
            "the cat and the dog and the cat again, the cat!", "river mountain city house car road " * 20]
    source = write_corpus(tmp_path / "corpus.csv", rows, list(range(100, 106)))
    embed(source, tmp_path / "out", "--model", model, "--outputs", "dense,sparse", "--shard-size", 4)
    table = read_output(tmp_path / "out")
    assert table.schema == pa.schema([
        ("id", pa.int64()), ("dense", pa.list_(pa.float32(), 32)),
        ("sparse_indices", pa.list_(pa.int32())), ("sparse_values", pa.list_(pa.float32())),
    ])
    served = server_vectors(model, rows, route="/v1/encodings")
    assert np.abs(dense(table) - np.array([s["dense"] for s in served], np.float32)).max() <= TOLERANCE
    for indices, values, item in zip(table.column("sparse_indices").to_pylist(), table.column("sparse_values").to_pylist(),
                                     served, strict=True):
        assert indices == item["sparse"]["indices"]
        assert np.allclose(values, item["sparse"]["values"], atol=TOLERANCE, rtol=0)


def shard_stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("part-*.parquet")}


def test_resume_after_sigkill_skips_finished_shards_and_equals_an_uninterrupted_run(tiny, tmp_path):
    source = write_corpus(tmp_path / "corpus.parquet", texts(20_000, seed=1), list(range(20_000)))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "embedserve", "embed-corpus", str(source), str(out), "--model", str(tiny),
            "--shard-size", "400", *ENGINE, "--no-progress"]
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    if json.loads((out / MANIFEST).read_text()).get("complete"):
                        break
                except (FileNotFoundError, json.JSONDecodeError):
                    pass
                time.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    complete = json.loads((out / MANIFEST).read_text())["complete"]
    assert 1 <= len(complete) < 50, "the run should have been killed part-way"
    for shard in out.glob("part-*.parquet"):
        assert pq.read_metadata(shard).num_rows == 400  # never half a shard under a final name
    finished = {name: stat for name, stat in shard_stats(out).items() if any(c["file"] == name for c in complete.values())}

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(complete)} already complete" in resumed.stderr
    after = shard_stats(out)
    assert len(after) == 50
    assert {name: after[name] for name in finished} == finished  # not rewritten: same inode, same mtime
    assert not list(out.glob(".*"))

    embed(source, tmp_path / "whole", "--model", tiny, "--shard-size", 400)
    resumed_table, whole = read_output(out), read_output(tmp_path / "whole")
    assert resumed_table.column("id").equals(whole.column("id"))
    assert np.abs(dense(resumed_table) - dense(whole)).max() <= TOLERANCE


def test_a_changed_input_or_model_is_refused(tiny, tmp_path):
    source = write_corpus(tmp_path / "corpus.csv", texts(20), list(range(20)))
    embed(source, tmp_path / "out", "--model", tiny, "--shard-size", 8)
    with open(source, "a") as fh:
        fh.write('20,"one more row"\n')
    result = CliRunner().invoke(app, ["embed-corpus", str(source), str(tmp_path / "out"), "--model", str(tiny),
                                      "--shard-size", "8", *ENGINE, "--no-progress"])
    assert result.exit_code == 1
    assert "different job" in result.output and "input.size" in result.output and "input.mtime_ns" in result.output
    other = build_generic(tmp_path / "other", seed=3, normalize=True)
    source2 = write_corpus(tmp_path / "corpus2.csv", texts(20), list(range(20)))
    embed(source2, tmp_path / "out2", "--model", tiny, "--shard-size", 8)
    result = CliRunner().invoke(app, ["embed-corpus", str(source2), str(tmp_path / "out2"), "--model", str(other),
                                      "--shard-size", "8", *ENGINE, "--no-progress"])
    assert result.exit_code == 1 and "model.name" in result.output
    assert len(list((tmp_path / "out2").glob("part-*.parquet"))) == 3  # nothing was touched


# ---- Ray Data on a two-node local cluster ---------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(request):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})

    def stop() -> None:
        ray.shutdown()
        cluster.shutdown()

    request.addfinalizer(stop)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster


def test_ray_mode_gives_local_modes_vectors_and_resumes_per_shard(ray_cluster, tiny, tmp_path):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    source = write_corpus(tmp_path / "corpus.parquet", texts(300, seed=2), [f"d{i}" for i in range(300)])
    embed(source, tmp_path / "local", "--model", tiny, "--shard-size", 64)
    output = embed(source, tmp_path / "ray", "--model", tiny, "--shard-size", 64, "--ray-batch-rows", 50, "--ray")
    assert "ray, 2 actors" in output
    local, on_ray = read_output(tmp_path / "local"), read_output(tmp_path / "ray")
    assert on_ray.schema == local.schema and on_ray.column("id").equals(local.column("id"))
    assert np.abs(dense(on_ray) - dense(local)).max() <= TOLERANCE
    assert json.loads((tmp_path / "ray" / MANIFEST).read_text())["complete"]["4"]["by"] == "ray"

    # Resume on Ray: shards 1 and 3 lost; only they are embedded again, the others stay as they are.
    manifest_path = tmp_path / "local" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    for k in ("1", "3"):
        del manifest["complete"][k]
        (tmp_path / "local" / f"part-0000{k}.parquet").unlink()
    manifest_path.write_text(json.dumps(manifest))
    kept = shard_stats(tmp_path / "local")
    output = embed(source, tmp_path / "local", "--model", tiny, "--shard-size", 64, "--ray-batch-rows", 50, "--ray")
    assert "2 shards written, 3 already complete" in output
    after = shard_stats(tmp_path / "local")
    assert {name: after[name] for name in kept} == kept and len(after) == 5
    resumed = read_output(tmp_path / "local")
    assert resumed.column("id").equals(local.column("id"))
    assert np.abs(dense(resumed) - dense(local)).max() <= TOLERANCE


# ---- the real default model ------------------------------------------------------------------


@pytest.mark.integration
def test_default_model_matches_sentence_transformers_and_the_server(tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedserve.corpus.encoder import resolve_model
    from embedserve.settings import DEFAULT_MODEL

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from sentences import load_sentences

    rows = load_sentences()[:300]
    source = write_corpus(tmp_path / "corpus.parquet", rows, list(range(300)))
    embed(source, tmp_path / "out", "--model", DEFAULT_MODEL, "--shard-size", 128)
    got = dense(read_output(tmp_path / "out"))
    folder = resolve_model(Settings(), DEFAULT_MODEL).path
    reference = SentenceTransformer(str(folder), device="cpu").encode(rows, batch_size=32, normalize_embeddings=True)
    cosines = np.sum(got * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.9999
    served = np.array([item["embedding"] for item in server_vectors(Path(DEFAULT_MODEL), rows)], np.float32)
    assert np.abs(got - served).max() <= TOLERANCE


def test_the_command_is_listed():
    assert "embed-corpus" in CliRunner().invoke(app, ["--help"]).output

"""The Embedding Service's fine-tuning routes on a real server process with the real trainer
(`python -m embedserve.training.run`), on a tiny BERT base: the README's requests, the job to
`completed`, the result served by name and equal to SentenceTransformer(<its folder>); a killed
training process leaves its job `failed` and the server serving; a job survives a restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import start_server, stop_server
from tests.support.tiny_models import COMMON_WORDS, build_bert_model

pytestmark = pytest.mark.integration

WORDS = COMMON_WORDS
TEXT = "\n".join(f"{WORDS[i]} {WORDS[i + 1]}\t{WORDS[i + 1]} {WORDS[i + 2]} {WORDS[i]}" for i in range(40))
TEXT += "\nthis line has no tab\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_bert_model(tmp_path_factory.mktemp("base") / "tiny-bert")


def serve(root: Path, base: Path):
    return start_server(root, "--model", str(base), "--models-dir", str(root / "models"),
                        "--state-dir", str(root / "state"), "--train-threads", "1", "--threads", "1")


def wait_for(url: str, job_id: str, statuses: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/train-status/{job_id}", timeout=10).json()
        if status["status"] in statuses:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not {statuses} in {timeout}s: {status}")


def embed(url: str, model: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}/v1/embeddings", json={"model": model, "input": texts}, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def test_fine_tune_and_lora_routes_train_models_served_by_name(base, tmp_path):
    from sentence_transformers import SentenceTransformer

    server = serve(tmp_path, base)
    try:
        texts = [f"{WORDS[3]} {WORDS[4]}", f"{WORDS[10]} {WORDS[12]} {WORDS[11]}"]
        for path, body, kind in (
            ("/fine-tune", {"text_content": TEXT, "model_name": "tiny-full"}, "full"),
            ("/fine-tune-lora", {"text_content": TEXT, "model_name": "tiny-lora"}, "lora"),
        ):
            r = httpx.post(server.url + path, json=body, timeout=30)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert answer["status"] == "pending" and answer["type"] == kind and answer["job_id"]
            done = wait_for(server.url, answer["job_id"], {"completed", "failed"})
            assert done["status"] == "completed", (done, server.log()[-3000:])
            assert done["progress"] == 100 and done["steps"] >= 1
            folder = tmp_path / "models" / body["model_name"]
            served = embed(server.url, body["model_name"], texts)
            reference = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
            cosines = np.sum(served * reference, axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
            assert cosines.min() >= 0.9999, (kind, cosines)
        assert httpx.get(server.url + "/train-status/no-such-job", timeout=10).status_code == 404
        r = httpx.post(server.url + "/fine-tune", json={"text_content": "no tabs here\nnor here", "model_name": "x"}, timeout=10)
        assert r.status_code == 422 and "2" in r.json()["error"]["message"]
        r = httpx.post(server.url + "/fine-tune", json={"text_content": TEXT, "model_name": "tiny-full"}, timeout=10)
        assert r.status_code == 409  # the name is taken by the first job's model
    finally:
        stop_server(server)


def _trainer_pids(job_id: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "embedserve.training.run" in cmdline and job_id in cmdline:
                pids.append(int(entry.name))
    return pids


def test_a_killed_training_process_fails_its_job_and_the_server_keeps_serving(base, tmp_path):
    server = serve(tmp_path, base)
    try:
        big = "\n".join([TEXT] * 30)  # enough steps to still be running when killed
        job_id = httpx.post(server.url + "/fine-tune", json={"text_content": big, "model_name": "killed"}, timeout=30).json()["job_id"]
        wait_for(server.url, job_id, {"running"})
        deadline = time.monotonic() + 30
        while not (pids := _trainer_pids(job_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids, "no training process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        failed = wait_for(server.url, job_id, {"failed", "completed"}, timeout=60)
        assert failed["status"] == "failed" and failed["error"], failed
        assert len(embed(server.url, None, ["still serving"])) == 1
        assert httpx.get(server.url + "/ready", timeout=10).status_code == 200
    finally:
        stop_server(server)


def test_a_job_survives_a_server_restart(base, tmp_path):
    server = serve(tmp_path, base)
    big = "\n".join([TEXT] * 30)
    try:
        job_id = httpx.post(server.url + "/fine-tune", json={"text_content": big, "model_name": "restarted"}, timeout=30).json()["job_id"]
        wait_for(server.url, job_id, {"running"})
    finally:
        stop_server(server)
    again = serve(tmp_path, base)
    try:
        status = httpx.get(f"{again.url}/train-status/{job_id}", timeout=10).json()
        assert status["status"] == "interrupted", status
        r = httpx.post(f"{again.url}/v1/fine_tuning/jobs/{job_id}/resume", timeout=30)
        assert r.status_code == 200, r.text
        assert wait_for(again.url, job_id, {"completed", "failed"})["status"] == "completed", again.log()[-3000:]
        assert (tmp_path / "models" / "restarted").is_dir()
    finally:
        stop_server(again)

"""`python -m embedserve.training.run` end to end on a tiny BERT: events, saved folders, resume, failure;
and `embedserve train`, the command line around it, as a user runs it."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedserve.training.data import Pair
from embedserve.training.defaults import defaults_for, prepare_job
from embedserve.training.run import read_events
from embedserve.training.spec import JobSpec
from tests.support.tiny_models import COMMON_WORDS, build_bert_model


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return build_bert_model(tmp_path_factory.mktemp("base") / "tiny-bert")


def _pairs(n=40):
    words = COMMON_WORDS
    return [Pair(f"{words[i]} {words[i + 1]}", f"{words[i + 1]} {words[i + 2]} {words[i]}") for i in range(n)]


def _job(tmp_path, base, method, **hp):
    hyper = defaults_for(method, epochs=1, batch_size=8, **hp)
    return prepare_job(
        job_id="job1", job_dir=tmp_path / "job", name=f"tiny-{method}", base_model=str(base), base_name="tiny-bert",
        method=method, train=_pairs(), validation=None, output_dir=tmp_path / "models" / f"tiny-{method}",
        hyperparameters=hyper, threads=1,
    )


def _run(job_dir):
    return subprocess.run([sys.executable, "-m", "embedserve.training.run", str(job_dir)], capture_output=True,
                          text=True, timeout=300)


def _check_events(spec):
    events = read_events(Path(spec.job_dir) / "events.jsonl")
    types = [e.type for e in events]
    assert types[0] == "started" and types[-1] == "completed"
    stages = [e.stage for e in events if e.type == "metrics"]
    assert stages == ["before", "after"]
    progress = [e for e in events if e.type == "progress"]
    # 30 training pairs (10 held out) at batch 8: 4 steps
    assert [e.step for e in progress] == [1, 2, 3, 4] and all(e.total_steps == 4 for e in progress)
    assert all(e.loss is not None and e.loss >= 0 for e in progress)
    assert events[-1].message == spec.output_dir and set(events[-1].metrics) == {"mrr@10", "recall@1"}
    return events


def test_full_job(tmp_path, tiny_base):
    from sentence_transformers import SentenceTransformer

    spec = _job(tmp_path, tiny_base, "full")
    result = _run(spec.job_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_events(spec)
    card = (tmp_path / "models" / "tiny-full" / "README.md").read_text()
    assert "tiny-bert" in card and "training pairs: 30" in card and "mrr@10" in card
    trained = SentenceTransformer(spec.output_dir).encode(["hello world"])
    base = SentenceTransformer(str(tiny_base)).encode(["hello world"])
    assert not np.allclose(trained, base)
    assert not list((tmp_path / "models").glob(".*partial*"))


def test_lora_job_saves_an_adapter_and_resumes(tmp_path, tiny_base):
    from sentence_transformers import SentenceTransformer

    from embedserve.training import peft_compat

    spec = _job(tmp_path, tiny_base, "lora", learning_rate=1e-2)
    result = _run(spec.job_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    _check_events(spec)
    folder = tmp_path / "models" / "tiny-lora"
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 16

    peft_compat.ensure()
    texts = ["hello world", "the quick brown fox"]
    loaded = SentenceTransformer(str(folder)).encode(texts)
    base_plus_adapter = SentenceTransformer(str(tiny_base))
    base_plus_adapter.load_adapter(str(folder))
    np.testing.assert_allclose(loaded, base_plus_adapter.encode(texts), atol=1e-6)
    assert not np.allclose(loaded, SentenceTransformer(str(tiny_base)).encode(texts), atol=1e-4)

    # resume: a rerun of the job (as after a server restart) continues from its last checkpoint
    resumed = dataclasses.replace(spec, resume=True, output_dir=str(tmp_path / "models" / "tiny-lora-2"))
    resumed.write(tmp_path / "job" / "spec.json")
    (tmp_path / "job" / "events.jsonl").unlink()
    result = _run(spec.job_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    events = read_events(tmp_path / "job" / "events.jsonl")
    assert any(e.type == "message" and "resuming from checkpoint-4" in e.message for e in events)
    assert events[-1].type == "completed"


def test_qlora_job_trains_on_4_bit_base_weights_and_its_adapter_serves_on_the_full_base(tmp_path):
    # bitsandbytes (a dependency) has a CPU backend: the job's base runs as 4-bit Linear4bit layers, whose
    # inputs must fill its 64-value blocks (hidden size 64 here, as in every real model)
    from sentence_transformers import SentenceTransformer

    from embedserve.backends.base import Batch
    from embedserve.backends.torch_backend import TorchBackend
    from embedserve.training.run import qlora_support

    assert qlora_support()[0], qlora_support()[1]
    tiny_base = build_bert_model(tmp_path / "tiny-bert-64", hidden_size=64)
    spec = _job(tmp_path, tiny_base, "qlora", learning_rate=1e-2)
    result = _run(spec.job_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    events = _check_events(spec)
    assert not any("plain LoRA" in (e.message or "") for e in events)
    folder = tmp_path / "models" / "tiny-qlora"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_base)
    # served as QLoRA adapters are: applied to the base in full precision
    texts = ["hello world", "the quick brown fox"]
    backend = TorchBackend(folder, device="cpu", threads=1)
    served = backend.embed(Batch.from_ids(backend.tokenize(texts, truncate=True), backend.pad_id))
    expected = SentenceTransformer(str(folder)).encode(texts)
    cos = (served * expected).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() >= 0.9999
    assert not np.allclose(expected, SentenceTransformer(str(tiny_base)).encode(texts), atol=1e-4)


def test_bad_base_fails_with_an_event(tmp_path):
    spec = _job(tmp_path, tmp_path / "no-such-model", "full")
    result = _run(spec.job_dir)
    assert result.returncode == 1
    events = read_events(tmp_path / "job" / "events.jsonl")
    assert events[-1].type == "failed" and "no-such-model" in events[-1].error
    assert not (tmp_path / "models" / "tiny-full").exists()
    assert JobSpec.read(tmp_path / "job" / "spec.json") == spec


def test_the_train_command_trains_a_model_that_loads(tmp_path, tiny_base):
    """`embedserve train` on a TSV file: exit 0, its progress on the terminal, a sentence-transformers
    folder that loads and encodes, and a model card with the held-out metrics before and after."""
    from click.testing import CliRunner
    from sentence_transformers import SentenceTransformer

    from embedserve.cli import app

    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{p.anchor}\t{p.positive}\n" for p in _pairs()) + "a line without a tab\n")
    models = tmp_path / "models"
    result = CliRunner().invoke(app, ["train", "--base", str(tiny_base), "--data", str(data), "--name", "tiny-cli",
                                      "--models-dir", str(models), "--batch-size", "8", "--epochs", "1"])
    output = result.output  # stdout and stderr (the progress bar) as the terminal shows them
    assert result.exit_code == 0, (output, result.exception)

    folder = models / "tiny-cli"
    assert "40 pairs (1 lines ignored)" in output
    assert f"full fine-tuning of {tiny_base}" in output  # the runner's `started` event
    assert "4/4" in output and "training" in output  # the progress bar reached the last of 4 steps
    assert "before: MRR@10" in output and "after: MRR@10" in output
    assert f"model saved to {folder.resolve()}" in output

    vectors = SentenceTransformer(str(folder), device="cpu").encode(["hello world", "the quick brown fox"])
    base = SentenceTransformer(str(tiny_base), device="cpu").encode(["hello world", "the quick brown fox"])
    assert vectors.shape == base.shape and np.isfinite(vectors).all() and not np.allclose(vectors, base)
    card = (folder / "README.md").read_text()
    assert "training pairs: 30" in card and "held-out pairs: 10" in card
    rows = {line.split("|")[1].strip(): line for line in card.splitlines() if line.startswith("| ") and "@" in line}
    assert set(rows) == {"mrr@10", "recall@1"}
    for row in rows.values():  # | metric | before | after |
        before, after = (float(cell) for cell in row.strip("|").split("|")[1:3])
        assert 0 <= before <= 1 and 0 <= after <= 1
    assert [p.name for p in models.iterdir()] == ["tiny-cli"]  # no partial folder left

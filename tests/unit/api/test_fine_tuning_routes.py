"""The fine-tuning routes on the fake backend and the fake trainer: the Embedding Service's
/fine-tune, /fine-tune-lora and /train-status, our /v1/fine_tuning/jobs, their bad inputs and scope."""

import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from embedserve.training.intake import default_hyperparameters
from tests.support.training import fake_command, wait_for

TSV = "Product A\tDescription of Product A\nProduct B\tDescription of Product B\nnot a pair\n"


@pytest.fixture
def make(make_client, tmp_path):
    def factory(mode="complete", tasks=frozenset({Task.EMBED}), **overrides):
        overrides.setdefault("models_dir", tmp_path / "models")
        return make_client(FakeBackend(tasks=tasks), training_command=fake_command(mode),
                           state_dir=tmp_path / "state", **overrides)

    return factory


def status(client, job_id):
    return client.get(f"/train-status/{job_id}").json()


UNSUPPORTED = (False, "4-bit QLoRA needs bitsandbytes, which is not installed on this server")


def test_the_embedding_service_requests_as_its_readme_shows(make, tmp_path, monkeypatch):
    monkeypatch.setattr("embedserve.api.fine_tune.qlora_support", lambda: UNSUPPORTED)  # a device without 4-bit
    client = make()
    r = client.post("/fine-tune", json={"text_content": TSV, "model_name": "my-finetuned-model"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"job_id", "status", "type"} and body["status"] == "pending" and body["type"] == "full"
    done = wait_for(lambda: status(client, body["job_id"]), lambda s: s["status"] == "completed")
    assert done == {"status": "completed", "progress": 100.0, "message": "completed", "error": None, "steps": 4,
                    "epoch": 1.0}
    assert (tmp_path / "models" / "my-finetuned-model").is_dir()
    r = client.post("/fine-tune-lora", json={"text_content": TSV, "model_name": "my-lora", "r": 8, "lora_alpha": 16,
                                             "lora_dropout": 0.1, "use_qlora": True})
    assert r.status_code == 200 and r.json()["type"] == "lora", r.text
    job_id = r.json()["job_id"]
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["method"]["lora"] == {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": None}
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]
    assert any("QLoRA" in e["message"] and "plain LoRA" in e["message"] and UNSUPPORTED[1] in e["message"]
               for e in events)
    assert any("1 lines ignored" in e["message"] for e in events)
    assert client.get("/train-status/nope").status_code == 404


def test_our_jobs_api_creates_lists_reads_events_and_cancels(make):
    client = make(mode="hang")
    pairs = [{"anchor": "q", "positive": "p"}, {"anchor": "q2", "positive": "p2", "negative": "n2"}]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", "training_data": pairs, "method": "lora",
                                                  "hyperparameters": {"n_epochs": 2, "lora_r": 4,
                                                                      "learning_rate_multiplier": 2},
                                                  "suffix": "mine"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["model"] == "org/fake-model" and job["status"] == "queued"
    assert job["fine_tuned_model"] is None and job["training_pairs"] == 2 and job["hyperparameters"]["n_epochs"] == 2
    assert job["hyperparameters"]["learning_rate"] == pytest.approx(2 * default_hyperparameters("lora").learning_rate)
    wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job['id']}").json(), lambda j: j["status"] == "running")
    listed = client.get("/v1/fine_tuning/jobs").json()
    assert listed["object"] == "list" and [j["id"] for j in listed["data"]] == [job["id"]]
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]
    assert any(e["type"] == "progress" and e["message"].startswith("step 1/10") for e in events)
    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 409
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").status_code == 409
    assert client.post("/v1/fine_tuning/jobs/nope/cancel").status_code == 404


@pytest.mark.parametrize(
    "path, body, code, says",
    [
        ("/fine-tune", {"text_content": "no tabs here\nnor here", "model_name": "x"}, 422, "2 lines ignored"),
        ("/fine-tune", {"text_content": TSV, "model_name": "a/b"}, 422, "plain name"),
        ("/fine-tune", {"text_content": TSV, "model_name": ".."}, 422, "plain name"),
        ("/fine-tune", {"text_content": TSV, "model_name": "fake-model"}, 409, "loaded"),
        ("/fine-tune", {"text_content": TSV, "model_name": "x", "base_model": "missing-model"}, 404, "missing-model"),
        ("/fine-tune-lora", {"text_content": TSV, "model_name": "x", "r": 0}, 422, "r"),
        ("/fine-tune-lora", {"text_content": TSV, "model_name": "x", "lora_dropout": 1.0}, 422, "lora_dropout"),
        ("/v1/fine_tuning/jobs", {"model": "org/fake-model", "training_data": TSV, "method": "qlora"}, 422, "qlora"),
        ("/v1/fine_tuning/jobs", {"model": "org/fake-model", "training_data": "x"}, 422, "1 lines ignored"),
        ("/v1/fine_tuning/jobs", {"model": "org/fake-model", "training_data": TSV, "suffix": "../up"}, 422, "plain"),
    ],
)
def test_bad_inputs(make, path, body, code, says, monkeypatch):
    monkeypatch.setattr("embedserve.api.fine_tuning.qlora_support", lambda: UNSUPPORTED)  # a device without 4-bit
    client = make()
    r = client.post(path, json=body)
    assert r.status_code == code, r.text
    assert says in r.text


def test_qlora_where_4_bit_training_runs(make, monkeypatch):
    supported = (True, "bitsandbytes 0.50.2 4-bit")
    monkeypatch.setattr("embedserve.api.fine_tune.qlora_support", lambda: supported)
    monkeypatch.setattr("embedserve.api.fine_tuning.qlora_support", lambda: supported)
    client = make(max_train_jobs=2)
    r = client.post("/fine-tune-lora", json={"text_content": TSV, "model_name": "my-qlora", "use_qlora": True})
    assert r.status_code == 200 and r.json()["type"] == "lora", r.text
    job = client.get(f"/v1/fine_tuning/jobs/{r.json()['job_id']}").json()
    assert job["method"]["type"] == "qlora"
    events = client.get(f"/v1/fine_tuning/jobs/{r.json()['job_id']}/events").json()["data"]
    assert not any("plain LoRA" in e["message"] for e in events)
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", "training_data": TSV, "method": "qlora"})
    assert r.status_code in (200, 201) and r.json()["method"]["type"] == "qlora", r.text


def test_a_taken_name_a_base_without_embed_and_no_models_dir(make, tmp_path):
    client = make()
    (tmp_path / "models" / "taken").mkdir(parents=True)
    assert client.post("/fine-tune", json={"text_content": TSV, "model_name": "taken"}).status_code == 409
    scorer = make(tasks=frozenset({Task.SCORE}))
    r = scorer.post("/fine-tune", json={"text_content": TSV, "model_name": "x2"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_task_unsupported", r.text
    off = make(models_dir=None)
    r = off.post("/fine-tune", json={"text_content": TSV, "model_name": "x3"})
    assert r.status_code == 400 and "--models-dir" in r.text
    assert off.get("/v1/fine_tuning/jobs").status_code == 400


def test_the_cap_is_a_429(make):
    client = make(mode="hang", max_train_jobs=1)
    assert client.post("/fine-tune", json={"text_content": TSV, "model_name": "one"}).status_code == 200
    r = client.post("/fine-tune", json={"text_content": TSV, "model_name": "two"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs" and r.headers["retry-after"]


def test_every_fine_tuning_route_needs_the_admin_scope(make, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-embed embed\nsk-admin admin\n")
    client = make(api_key_file=keys)
    for method, path in [("POST", "/fine-tune"), ("POST", "/fine-tune-lora"), ("GET", "/train-status/x"),
                         ("POST", "/v1/fine_tuning/jobs"), ("GET", "/v1/fine_tuning/jobs"),
                         ("GET", "/v1/fine_tuning/jobs/x"), ("GET", "/v1/fine_tuning/jobs/x/events"),
                         ("POST", "/v1/fine_tuning/jobs/x/cancel"), ("POST", "/v1/fine_tuning/jobs/x/resume")]:
        assert client.request(method, path).status_code == 401
        assert client.request(method, path, headers={"X-Api-Key": "sk-embed"}).status_code == 403
    assert client.get("/train-status/x", headers={"X-Api-Key": "sk-admin"}).status_code == 404

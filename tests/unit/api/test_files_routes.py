"""POST/GET/DELETE /v1/files (OpenAI's Files API, purpose fine-tune) on the fake backend and trainer,
and POST /v1/fine_tuning/jobs naming an uploaded file as `training_file` / `validation_file`."""

import json

import pytest

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from embedserve.training.data import read_pairs
from tests.support.training import fake_command, wait_for

TSV = b"Product A\tDescription of Product A\nProduct B\tDescription of Product B\nProduct C\tAbout C\nnot a pair\n"
JSONL = b'{"anchor": "q1", "positive": "p1"}\n{"anchor": "q2", "positive": "p2"}\n'


@pytest.fixture
def make(make_client, tmp_path):
    def factory(mode="complete", **overrides):
        overrides.setdefault("models_dir", tmp_path / "models")
        return make_client(FakeBackend(tasks=frozenset({Task.EMBED})), training_command=fake_command(mode),
                           state_dir=tmp_path / "state", **overrides)

    return factory


def upload(client, content=TSV, filename="pairs.tsv", purpose="fine-tune", **kwargs):
    return client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose}, **kwargs)


def stored(tmp_path):
    folder = tmp_path / "state" / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_upload_get_list_and_delete(make, tmp_path):
    client = make()
    r = upload(client)
    assert r.status_code == 200, r.text
    first = r.json()
    assert set(first) == {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
    assert first["id"].startswith("file-") and first["object"] == "file" and first["bytes"] == len(TSV)
    assert first["filename"] == "pairs.tsv" and first["purpose"] == "fine-tune" and first["created_at"] > 0
    assert stored(tmp_path) == [first["id"]]
    assert (tmp_path / "state" / "files" / first["id"]).read_bytes() == TSV
    second = upload(client, JSONL, "pairs.jsonl").json()

    assert client.get(f"/v1/files/{first['id']}").json() == first
    listed = client.get("/v1/files").json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [second["id"], first["id"]]
    assert listed["first_id"] == second["id"] and listed["last_id"] == first["id"] and not listed["has_more"]
    page = client.get("/v1/files", params={"limit": 1, "order": "asc"}).json()
    assert [f["id"] for f in page["data"]] == [first["id"]] and page["has_more"]
    page = client.get("/v1/files", params={"limit": 1, "order": "asc", "after": first["id"]}).json()
    assert [f["id"] for f in page["data"]] == [second["id"]] and not page["has_more"]
    assert client.get("/v1/files", params={"purpose": "batch"}).json()["data"] == []

    r = client.delete(f"/v1/files/{first['id']}")
    assert r.status_code == 200 and r.json() == {"id": first["id"], "object": "file", "deleted": True}
    assert stored(tmp_path) == [second["id"]]
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [second["id"]]
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/files/{first['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found", r.text


def test_files_survive_a_restart(make):
    uploaded = upload(make()).json()
    assert make().get(f"/v1/files/{uploaded['id']}").json() == uploaded


def test_the_filename_is_metadata_never_a_path(make, tmp_path):
    client = make()
    r = upload(client, filename="../../escape/evil.tsv")
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == "evil.tsv"
    assert stored(tmp_path) == [r.json()["id"]]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "state" / "escape").exists()


def test_the_size_cap_is_a_413_and_leaves_nothing_behind(make, tmp_path):
    client = make(max_file_bytes=len(TSV))
    assert upload(client).status_code == 200  # exactly at the cap
    r = upload(client, TSV + b"Product D\tAbout D\n")
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert "--max-file-bytes" in r.json()["error"]["message"]
    assert len(stored(tmp_path)) == 1  # no partial file kept
    assert len(client.get("/v1/files").json()["data"]) == 1


def test_a_file_may_be_larger_than_max_body_bytes(make):
    big = b"".join(b"query %d\tpassage %d\n" % (i, i) for i in range(2000))  # ~40 KB
    client = make(max_body_bytes=4096, max_file_bytes=len(big))
    r = upload(client, big)
    assert r.status_code == 200 and r.json()["bytes"] == len(big), r.text
    r = upload(client, big * 3)  # past the file cap and its form: refused before the body is read
    assert r.status_code == 413, r.text
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", "training_data": big.decode()})
    assert r.status_code == 413  # every other route keeps --max-body-bytes


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"purpose": "assistants"}, "purpose"),
        ({"purpose": "batch"}, "fine-tune"),
        ({"content": b"no tabs here\nnor here\n"}, "2 lines ignored"),
        ({"content": b""}, "no valid pairs"),
        ({"content": b"q\t\xff\xfe\n"}, "UTF-8"),
    ],
)
def test_bad_uploads_are_422(make, tmp_path, kwargs, says):
    client = make()
    r = upload(client, **kwargs)
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]["message"]
    assert stored(tmp_path) == []


def test_a_form_without_a_file_or_not_a_form_is_422(make):
    client = make()
    assert client.post("/v1/files", data={"purpose": "fine-tune"}).status_code == 422
    assert client.post("/v1/files", json={"file": "q\tp", "purpose": "fine-tune"}).status_code == 422
    r = client.post("/v1/files", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})  # no boundary
    assert r.status_code == 422 and "multipart" in r.json()["error"]["message"], r.text


def test_a_job_from_uploaded_files_trains_on_their_pairs(make):
    client = make()
    train = upload(client).json()["id"]
    validation = upload(client, JSONL, "held-out.jsonl").json()["id"]
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", "training_file": train,
                                                  "validation_file": validation, "suffix": "from-files"})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["training_pairs"] == 3 and job["ignored_lines"] == 1 and job["validation_pairs"] == 2
    record = client.app.state.training.get(job["id"])
    assert [p.anchor for p in read_pairs(f"{record.job_dir}/train.jsonl")] == ["Product A", "Product B", "Product C"]
    assert [p.positive for p in read_pairs(f"{record.job_dir}/validation.jsonl")] == ["p1", "p2"]
    done = wait_for(lambda: client.get(f"/v1/fine_tuning/jobs/{job['id']}").json(),
                    lambda j: j["status"] == "succeeded")
    assert done["fine_tuned_model"] == "from-files"
    # the job keeps its own copy: deleting the files afterwards changes nothing for it
    assert client.delete(f"/v1/files/{train}").status_code == 200
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["training_pairs"] == 3

    # a file and inline data mix: inline training pairs, a file's validation pairs
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", "training_data": TSV.decode(),
                                                  "validation_file": validation, "suffix": "mixed"})
    assert r.status_code == 200 and r.json()["validation_pairs"] == 2, r.text


@pytest.mark.parametrize(
    "body, code, says",
    [
        ({"training_file": "file-nope"}, 404, "file-nope"),
        ({"training_data": "q\tp", "validation_file": "file-nope"}, 404, "file-nope"),
        ({}, 422, "'training_data' or as 'training_file'"),
        ({"training_data": "q\tp", "training_file": "file-x"}, 422, "one of them"),
        ({"training_data": "q\tp", "validation_data": "q\tp", "validation_file": "file-x"}, 422, "not both"),
    ],
)
def test_job_file_errors(make, body, code, says):
    client = make()
    r = client.post("/v1/fine_tuning/jobs", json={"model": "org/fake-model", **body})
    assert r.status_code == code, r.text
    error = r.json()["error"]
    assert says in error["message"]
    if code == 404:
        assert error["code"] == "file_not_found" and error["param"] in ("training_file", "validation_file")


def test_without_models_dir_the_files_routes_are_off(make, tmp_path):
    client = make(models_dir=None)
    for r in (upload(client), client.get("/v1/files"), client.get("/v1/files/file-x"),
              client.delete("/v1/files/file-x")):
        assert r.status_code == 400 and r.json()["error"]["code"] == "training_disabled", r.text
    assert not (tmp_path / "state").exists()


def test_every_files_route_needs_the_admin_scope(make, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-embed embed\nsk-admin admin\n")
    client = make(api_key_file=keys)
    for method, path in [("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/x"),
                         ("DELETE", "/v1/files/x")]:
        assert client.request(method, path).status_code == 401
        assert client.request(method, path, headers={"X-Api-Key": "sk-embed"}).status_code == 403
    r = upload(client, headers={"X-Api-Key": "sk-admin"})
    assert r.status_code == 200, r.text
    assert json.loads(client.get("/v1/files", headers={"X-Api-Key": "sk-admin"}).text)["data"][0]["id"] == r.json()["id"]


def test_openais_sdk_uploads_lists_and_trains_from_a_file(make):
    from openai import OpenAI

    client = make()
    sdk = OpenAI(base_url=f"{client.base_url}/v1", api_key="unused", http_client=client, max_retries=0)
    uploaded = sdk.files.create(file=("pairs.tsv", TSV), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(TSV) and uploaded.filename == "pairs.tsv"
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
    assert [f.id for f in sdk.files.list()] == [uploaded.id]
    job = sdk.fine_tuning.jobs.create(model="org/fake-model", training_file=uploaded.id, suffix="sdk-tuned")
    assert job.object == "fine_tuning.job" and job.model == "org/fake-model"
    assert client.get(f"/v1/fine_tuning/jobs/{job.id}").json()["training_pairs"] == 3
    deleted = sdk.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id

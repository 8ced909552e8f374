"""The job store: rows and events round-trip, survive reopening, and are safe across threads."""

import threading

from embedserve.training.store import JobRecord, JobStore


def record(job_id: str, **fields) -> JobRecord:
    return JobRecord(id=job_id, name=f"model-{job_id}", base="org/base", method="lora", type="lora",
                     job_dir=f"/jobs/{job_id}", output_dir=f"/models/model-{job_id}", **fields)


def test_jobs_round_trip_and_survive_reopening(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.insert(record("a", hyperparameters={"lora_r": 8}, created_at=1.0))
    store.insert(record("b", created_at=2.0))
    store.update("a", status="running", progress=50.0, metrics_before={"mrr@10": 0.5}, steps=3, epoch=0.5)
    store.add_event("a", "progress", {"step": 3, "loss": 0.25}, created_at=5.0)
    store.add_event("a", "message", {"message": "hi"})
    store.close()

    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.get("a")
    assert job.status == "running" and job.progress == 50.0 and job.steps == 3 and job.epoch == 0.5
    assert job.metrics_before == {"mrr@10": 0.5} and job.metrics_after is None
    assert job.hyperparameters == {"lora_r": 8} and job.type == "lora"
    assert [j.id for j in store.list()] == ["b", "a"]  # newest first
    assert [j.id for j in store.list(statuses=("running",))] == ["a"]
    events = store.events("a")
    assert [(e.type, e.data) for e in events] == [("progress", {"step": 3, "loss": 0.25}), ("message", {"message": "hi"})]
    assert [e.type for e in store.events("a", limit=1)] == ["message"]  # the last ones
    assert store.get("missing") is None and store.events("missing") == []


def test_concurrent_writers_lose_nothing(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.insert(record("a"))

    def write(n):
        for i in range(50):
            store.add_event("a", "progress", {"step": i, "writer": n})
            store.update("a", steps=i)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.events("a")) == 200

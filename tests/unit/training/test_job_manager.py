"""The job manager on the fake trainer (tests/support/fake_trainer.py): events become status and
progress, cancel stops the process group, the cap answers 429, a process that dies unannounced
leaves its job failed, and jobs left running by a stopped or crashed server come back interrupted."""

import asyncio
import json
import signal

import pytest

from embedserve.errors import Conflict, InvalidInput, JobNotFound, TooManyJobs, TrainingDisabled
from embedserve.settings import Settings
from embedserve.training.data import Pair, Parsed
from embedserve.training.intake import JobRequest, check_hyperparameters
from embedserve.training.manager import JobManager
from embedserve.training.spec import Hyperparameters, JobSpec
from tests.support.training import fake_command

PAIRS = Parsed([Pair("q1", "p1"), Pair("q2", "p2", "n2")], ignored=1)


def settings(tmp_path, **overrides) -> Settings:
    return Settings(models_dir=tmp_path / "models", state_dir=tmp_path / "state", train_threads=3, **overrides)


def request(name="tuned", method="full", **fields) -> JobRequest:
    return JobRequest(name=name, base_name="org/base", base_path="/base", method=method, train=PAIRS, **fields)


async def until(manager, job_id, *statuses, timeout=20.0):
    async def poll():
        while (job := manager.get(job_id)).status not in statuses:
            await asyncio.sleep(0.02)
        return job

    return await asyncio.wait_for(poll(), timeout)


async def started(tmp_path, mode, **overrides) -> JobManager:
    manager = JobManager(settings(tmp_path, **overrides), command=fake_command(mode), poll_interval=0.02, stop_timeout=5)
    await manager.start()
    return manager


async def test_a_job_runs_to_completed_with_its_files_events_and_metrics(tmp_path):
    manager = await started(tmp_path, "complete")
    job = await manager.submit(request(method="lora"))
    assert job.status == "pending" and job.type == "lora" and job.train_count == 2 and job.ignored_lines == 1
    job = await until(manager, job.id, "completed")
    assert job.progress == 100.0 and job.steps == 4 and job.epoch == 1.0
    assert job.metrics_before == {"mrr@10": 0.5, "recall@1": 0.4} and job.metrics_after["mrr@10"] == 0.7
    assert (tmp_path / "models" / "tuned" / "trained.txt").read_text() == "tuned"
    job_dir = tmp_path / "state" / "jobs" / job.id
    spec = JobSpec.read(job_dir / "spec.json")
    assert spec.method == "lora" and spec.threads == 3 and spec.output_dir == str(tmp_path / "models" / "tuned")
    lines = [json.loads(line) for line in (job_dir / "train.jsonl").read_text().splitlines()]
    assert lines == [{"anchor": "q1", "positive": "p1"}, {"anchor": "q2", "positive": "p2", "negative": "n2"}]
    types = [e.type for e in manager.events(job.id)]
    assert types[0] == "message" and "started" in types and types[-1] == "completed" and types.count("progress") == 4
    assert "threads=3" in next(e.data["message"] for e in manager.events(job.id) if e.type == "started")
    with pytest.raises(Conflict):  # the name is taken now: the folder exists
        manager.check_new_name("tuned")
    await manager.stop()


async def test_cancel_stops_the_process_and_a_finished_job_is_a_409(tmp_path):
    manager = await started(tmp_path, "hang")
    job = await manager.submit(request())
    job = await until(manager, job.id, "running")
    assert job.progress == 10.0 and job.steps == 1
    proc = manager._procs[job.id]
    job = await manager.cancel(job.id)
    assert job.status == "cancelled"
    await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
    assert proc.returncode == -signal.SIGTERM
    await asyncio.sleep(0.1)  # the watcher's last look changes nothing
    assert manager.get(job.id).status == "cancelled" and manager.running() == 0
    with pytest.raises(Conflict):
        await manager.cancel(job.id)
    with pytest.raises(JobNotFound):
        await manager.cancel("no-such-job")
    await manager.stop()


async def test_past_the_cap_429_and_a_live_jobs_name_is_taken(tmp_path):
    manager = await started(tmp_path, "hang", max_train_jobs=1)
    await manager.submit(request("first"))
    with pytest.raises(Conflict):
        await manager.submit(request("first"))
    with pytest.raises(TooManyJobs) as refused:
        await manager.submit(request("second"))
    assert refused.value.status == 429 and refused.value.retry_after
    await manager.stop()


@pytest.mark.parametrize("mode, error", [("crash", "signal SIGKILL"), ("exit", "code 3"), ("fail", "fairy dust")])
async def test_a_process_that_dies_leaves_the_job_failed_with_why(tmp_path, mode, error):
    manager = await started(tmp_path, mode)
    job = await manager.submit(request())
    job = await until(manager, job.id, "failed")
    assert error in job.error and job.finished_at is not None
    # a job that says why it failed ("fail") writes that before its interpreter exits: no process stays
    for _ in range(200):
        if manager.running() == 0:
            break
        await asyncio.sleep(0.05)
    assert manager.running() == 0
    assert manager.events(job.id)[-1].type == "failed"
    await manager.stop()


async def test_stop_interrupts_running_jobs_and_resume_restarts_them(tmp_path):
    manager = await started(tmp_path, "hang")
    job = await manager.submit(request())
    await until(manager, job.id, "running")
    proc = manager._procs[job.id]
    await manager.stop()
    assert proc.poll() is not None
    manager = await started(tmp_path, "complete")
    job = manager.get(job.id)
    assert job.status == "interrupted" and "resume" in job.message
    with pytest.raises(Conflict):  # an interrupted job still holds its name
        manager.check_new_name("tuned")
    job = await manager.resume(job.id)
    assert job.status == "pending"
    job = await until(manager, job.id, "completed")
    assert JobSpec.read(tmp_path / "state" / "jobs" / job.id / "spec.json").resume is True
    assert "resume=True" in [e.data.get("message", "") for e in manager.events(job.id) if e.type == "started"][-1]
    with pytest.raises(Conflict):
        await manager.resume(job.id)  # only an interrupted job resumes
    await manager.stop()


async def test_a_server_killed_outright_leaves_jobs_interrupted_and_its_orphan_stopped(tmp_path):
    manager = await started(tmp_path, "hang")
    job = await manager.submit(request())
    await until(manager, job.id, "running")
    orphan = manager._procs[job.id]
    manager._procs.clear()  # as if the server died: nothing stops the process
    for task in manager._watchers.values():
        task.cancel()
    manager.store.close()
    fresh = await started(tmp_path, "hang")
    assert fresh.get(job.id).status == "interrupted"
    await asyncio.wait_for(asyncio.to_thread(orphan.wait), 10)  # the old process was stopped
    await fresh.stop()


async def test_without_models_dir_training_is_off_and_the_state_dir_untouched(tmp_path):
    manager = JobManager(Settings(state_dir=tmp_path / "state"), command=fake_command("complete"))
    await manager.start()
    with pytest.raises(TrainingDisabled):
        manager.list()
    with pytest.raises(TrainingDisabled):
        await manager.submit(request())
    assert not (tmp_path / "state").exists()
    await manager.stop()


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "../x", "-x", "x" * 97])
async def test_names_that_are_not_plain_are_a_422(tmp_path, name):
    manager = await started(tmp_path, "complete")
    with pytest.raises(InvalidInput):
        manager.check_new_name(name)
    await manager.stop()


@pytest.mark.parametrize("bad", [{"lora_r": 0}, {"lora_dropout": 1.0}, {"lora_dropout": -0.1}, {"epochs": 0}])
def test_out_of_range_hyperparameters_are_a_422(bad):
    with pytest.raises(InvalidInput):
        check_hyperparameters(Hyperparameters(**bad))


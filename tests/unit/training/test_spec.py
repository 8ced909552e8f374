from embedserve.training.defaults import defaults_for, prepare_job
from embedserve.training.data import Pair, read_pairs
from embedserve.training.spec import Event, Hyperparameters, JobSpec
from embedserve.training.run import EventWriter, read_events


def test_spec_round_trip(tmp_path):
    spec = JobSpec(
        job_id="j", name="n", base_model="/m", base_name="m", method="lora", train_file="t", validation_file=None,
        output_dir="/o", job_dir=str(tmp_path),
        hyperparameters=Hyperparameters(lora_target_modules=("query", "value"), learning_rate=3e-4), threads=2,
    )
    spec.write(tmp_path / "spec.json")
    assert JobSpec.read(tmp_path / "spec.json") == spec


def test_events_append_and_parse(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl")
    writer.emit("progress", step=1, total_steps=4, epoch=0.25, loss=1.5)
    writer.emit("metrics", metrics={"mrr@10": 0.5, "recall@1": 0.25}, stage="before")
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write('{"type": "prog')  # a torn last line from a killed writer
    events = read_events(tmp_path / "events.jsonl")
    assert [e.type for e in events] == ["progress", "metrics"]
    assert events[1] == Event.parse(events[1].line())


def test_defaults_and_overrides():
    assert defaults_for("lora").learning_rate > defaults_for("full").learning_rate
    assert defaults_for("qlora") == defaults_for("lora")
    assert defaults_for("full", epochs=3, batch_size=None).epochs == 3


def test_prepare_job_carves_a_held_out_split(tmp_path):
    pairs = [Pair(f"q{i}", f"p{i}") for i in range(100)]
    spec = prepare_job(
        job_id="j", job_dir=tmp_path / "job", name="n", base_model="/m", base_name="m", method="full",
        train=pairs, validation=None, output_dir=tmp_path / "out", hyperparameters=defaults_for("full"), threads=1,
    )
    assert len(read_pairs(spec.train_file)) == 90 and len(read_pairs(spec.validation_file)) == 10
    assert JobSpec.read(tmp_path / "job" / "spec.json") == spec

"""What a fine-tuning job is, as the server hands it to the process that trains it, and what that
process reports back.

The server and the trainer share nothing but files: the job's spec (`spec.json`, this dataclass)
and its events (`events.jsonl`, one `Event` per line, appended by the trainer). That keeps the
training process disposable: a crash or an out-of-memory kill of it loses at most the events
not yet written, never the server, and a restarted server reads back where a job had got to.

Layout of a job's folder (`<state-dir>/jobs/<job_id>/`): `spec.json`, `events.jsonl`,
`train.jsonl` / `validation.jsonl` (the pairs, normalised to `{"anchor", "positive",
"negative"?}` lines), `checkpoints/` (the trainer's, for resuming), `log.txt` (the process's
stdout and stderr). The result is written to `output_dir` (`<models-dir>/<name>`) only when
complete: into a temporary sibling first, renamed at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["full", "lora", "qlora"]
EventType = Literal["started", "progress", "metrics", "message", "completed", "failed"]


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] | None = None  # None: peft's default for the architecture
    seed: int = 0


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    name: str  # the result's model name: a plain name, never a path
    base_model: str  # the base model's local folder (resolved by the server)
    base_name: str  # the base model as the client named it
    method: Method
    train_file: str  # JSONL pairs
    validation_file: str | None  # JSONL pairs held out for MRR@10 / recall@1 before and after
    output_dir: str
    job_dir: str
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    threads: int = 1  # torch intra-op threads of the training process (--train-threads)
    resume: bool = False  # continue from the last checkpoint in job_dir/checkpoints

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        data = json.loads(path.read_text())
        hyper = data.pop("hyperparameters", {})
        if hyper.get("lora_target_modules") is not None:
            hyper["lora_target_modules"] = tuple(hyper["lora_target_modules"])
        return cls(**data, hyperparameters=Hyperparameters(**hyper))


@dataclass(frozen=True)
class Event:
    """One line of events.jsonl. `progress` carries step/total_steps/epoch/loss; `metrics` carries
    `metrics` ({"mrr@10", "recall@1"}) and `stage` ("before" | "after"); `completed` carries the
    output folder in `message` and the final metrics; `failed` carries `error`."""

    type: EventType
    created_at: float
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    metrics: dict[str, float] | None = None
    stage: str | None = None
    message: str | None = None
    error: str | None = None

    def line(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})

    @classmethod
    def parse(cls, line: str) -> Event:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)

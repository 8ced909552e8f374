"""Hyperparameters a job gets when the client names none (the Embedding Service's routes never do),
and the job-folder preparation shared by the server and `embedserve train`.

The defaults were measured on all-MiniLM-L6-v2 with stdlib-pairs-train.tsv, evaluated on
stdlib-pairs-dev.tsv (docs/fine-tuning.md): one epoch of MNRL at batch 32. LoRA trains far fewer
weights, each of which must move further, so it needs a learning rate ~10x full fine-tuning's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from embedserve.training.data import Pair, split_held_out, write_pairs
from embedserve.training.spec import Hyperparameters, JobSpec, Method

__all__ = ["defaults_for", "prepare_job"]

_DEFAULTS: dict[str, Hyperparameters] = {
    "full": Hyperparameters(epochs=1, batch_size=32, learning_rate=5e-5, warmup_ratio=0.1),
    "lora": Hyperparameters(epochs=1, batch_size=32, learning_rate=5e-4, warmup_ratio=0.1,
                            lora_r=16, lora_alpha=32, lora_dropout=0.05),
}  # fmt: skip
_DEFAULTS["qlora"] = _DEFAULTS["lora"]


def defaults_for(method: Method, **overrides) -> Hyperparameters:
    """The measured defaults of `method`, with any of the client's values (not None) on top."""
    if method not in _DEFAULTS:
        raise ValueError(f"unknown method {method!r} (full, lora or qlora)")
    return replace(_DEFAULTS[method], **{k: v for k, v in overrides.items() if v is not None})


def prepare_job(
    *,
    job_id: str,
    job_dir: Path,
    name: str,
    base_model: str,
    base_name: str,
    method: Method,
    train: list[Pair],
    validation: list[Pair] | None,
    output_dir: Path,
    hyperparameters: Hyperparameters,
    threads: int,
) -> JobSpec:
    """Write a job folder (normalised pairs, spec.json) ready for `python -m embedserve.training.run`.

    Without validation pairs, a held-out split is carved from `train` (data.split_held_out,
    seeded with the job's seed so a rerun holds out the same pairs).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    if not validation:
        train, validation = split_held_out(train, seed=hyperparameters.seed)
    write_pairs(job_dir / "train.jsonl", train)
    validation_file = None
    if validation:
        write_pairs(job_dir / "validation.jsonl", validation)
        validation_file = str(job_dir / "validation.jsonl")
    spec = JobSpec(
        job_id=job_id,
        name=name,
        base_model=base_model,
        base_name=base_name,
        method=method,
        train_file=str(job_dir / "train.jsonl"),
        validation_file=validation_file,
        output_dir=str(output_dir),
        job_dir=str(job_dir),
        hyperparameters=hyperparameters,
        threads=threads,
    )
    spec.write(job_dir / "spec.json")
    return spec

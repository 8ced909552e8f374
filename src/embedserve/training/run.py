"""The training process: `python -m embedserve.training.run <job_dir>`.

Runs one job described by `<job_dir>/spec.json` (see spec.py) in its own process, so that the
server never shares memory or threads with training; everything it has to say goes to
`<job_dir>/events.jsonl`, one flushed line per event, which the server (or `embedserve train`)
reads. Exit code 0 after a `completed` event, 1 after a `failed` one.

Training uses sentence-transformers' own trainer and MultipleNegativesRankingLoss (the loss the
Embedding Service used; in-batch negatives need nothing but the pairs). LoRA goes through ST's PEFT
adapter support, so the result is the adapter folder ST itself writes and loads.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from embedserve.training.data import Pair, read_pairs
from embedserve.training.spec import Event, JobSpec

__all__ = ["EventWriter", "qlora_support", "run_job", "main", "CACHED_LOSS_ABOVE"]

# Batches larger than this use CachedMultipleNegativesRankingLoss (GradCache): the same loss
# with memory bounded by its mini-batch, so a large batch (more in-batch negatives) fits in RAM.
CACHED_LOSS_ABOVE = 64
CACHED_MINI_BATCH = 32


class EventWriter:
    """Appends events to events.jsonl, one flushed line each, so a reader never sees half an event
    and a killed process loses at most the event it was writing."""

    def __init__(self, path: Path):
        self.path = path

    def emit(self, type: str, **fields: Any) -> Event:
        event = Event(type=type, created_at=time.time(), **fields)  # type: ignore[arg-type]
        with self.path.open("a", encoding="utf-8") as out:
            out.write(event.line() + "\n")
            out.flush()
        return event


def read_events(path: Path) -> list[Event]:
    """The events written so far (a torn last line, from a killed writer, is skipped)."""
    events = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(Event.parse(line))
            except ValueError:
                continue
    return events


def qlora_support() -> tuple[bool, str]:
    """Whether 4-bit QLoRA can train here, and why not.

    Needs bitsandbytes with a backend for this device: on CPU that is bitsandbytes >= 0.49
    (its CPU backend runs 4-bit `Linear4bit` forward and backward; checked with 0.50.2 on an
    x86-64 AVX-512 CPU). The check runs a tiny 4-bit layer forward and backward rather than
    trusting the version alone.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False, "bitsandbytes is not installed (pip install 'bitsandbytes>=0.49' for CPU 4-bit support)"
    except Exception as exc:  # a broken native library raises anything at import
        return False, f"bitsandbytes does not load on this machine: {exc}"
    try:
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to("cuda" if torch.cuda.is_available() else "cpu")
        x = torch.randn(2, 64, device=layer.weight.device, requires_grad=True)
        layer(x).sum().backward()
    except Exception as exc:
        version = getattr(bnb, "__version__", "?")
        return False, f"bitsandbytes {version} cannot run 4-bit layers on this device: {exc}"
    return True, f"bitsandbytes {bnb.__version__} 4-bit"


def _dataset(pairs: list[Pair]):
    from datasets import Dataset

    columns: dict[str, list[str]] = {"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]}
    if pairs and all(p.negative is not None for p in pairs):
        columns["negative"] = [p.negative for p in pairs]  # type: ignore[misc]
    return Dataset.from_dict(columns)


def _load_model(spec: JobSpec):
    """The base model, with a LoRA adapter added for lora / qlora (4-bit base weights for qlora)."""
    from sentence_transformers import SentenceTransformer

    hp = spec.hyperparameters
    model_kwargs: dict[str, Any] = {}
    if spec.method == "qlora":
        ok, reason = qlora_support()
        if not ok:
            raise RuntimeError(f"QLoRA is not supported here: {reason}")
        import torch
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    if not Path(spec.base_model).is_dir():
        raise FileNotFoundError(f"base model folder not found: {spec.base_model}")
    model = SentenceTransformer(spec.base_model, device="cpu", model_kwargs=model_kwargs or None)
    if spec.method == "qlora":
        _keep_4bit_layers_trainable(model)
    if spec.method in ("lora", "qlora"):
        from peft import LoraConfig, TaskType

        from embedserve.training import peft_compat

        peft_compat.ensure()
        model.add_adapter(
            LoraConfig(
                task_type=TaskType.FEATURE_EXTRACTION,
                inference_mode=False,
                r=hp.lora_r,
                lora_alpha=hp.lora_alpha,
                lora_dropout=hp.lora_dropout,
                target_modules=list(hp.lora_target_modules) if hp.lora_target_modules else None,
            )
        )
    return model


def _keep_4bit_layers_trainable(model) -> None:
    """Turn off bitsandbytes' packed CPU inference format for the job's 4-bit layers.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a `Linear4bit`'s weights for a faster kernel
    the first time it runs in eval mode without gradients, which a job does first (the held-out
    metrics before training). That path then adds the bias in place and fails ("a view of a leaf
    Variable that requires grad is being used in an in-place operation"), and the repacked weights
    are meant for inference only. The standard 4-bit path trains and evaluates alike.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _progress_callback(events: EventWriter):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One `progress` event per logged step (logging_steps=1: the loss of each step)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                events.emit(
                    "progress",
                    step=state.global_step,
                    total_steps=state.max_steps,
                    epoch=round(float(state.epoch or 0.0), 4),
                    loss=float(logs["loss"]),
                )

    return Progress()


def _last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder))


def model_card(spec: JobSpec, counts: dict[str, int], before: dict | None, after: dict | None, seconds: float) -> str:
    """The README.md saved with the model: what it was trained from and whether it got better."""
    from dataclasses import asdict

    hp = asdict(spec.hyperparameters)
    lines = [
        f"# {spec.name}",
        "",
        f"Fine-tuned from `{spec.base_name}` by embedserve ({spec.method}"
        f"{', LoRA adapter: load with SentenceTransformer(folder), torch backend' if spec.method != 'full' else ''}).",
        "",
        "## Data",
        "",
        f"- training pairs: {counts['train']}",
        f"- held-out pairs: {counts['validation']}",
        "",
        "## Training",
        "",
        "- loss: " + ("CachedMultipleNegativesRankingLoss" if hp["batch_size"] > CACHED_LOSS_ABOVE else
                      "MultipleNegativesRankingLoss"),
        f"- time: {seconds:.0f} s with {spec.threads} thread(s)",
        *[f"- {k}: {v}" for k, v in hp.items()],
        "",
        "## Held-out retrieval (each query's passage among all passages of the split)",
        "",
    ]
    if before and after:
        lines += ["| metric | before | after |", "|---|---|---|"]
        lines += [f"| {k} | {before[k]:.4f} | {after[k]:.4f} |" for k in before]
    else:
        lines.append("Not measured: too few pairs to hold any out.")
    return "\n".join(lines) + "\n"


def run_job(job_dir: Path) -> int:
    """Run the job in `job_dir`; 0 when it completed, 1 when it failed (a `failed` event says why)."""
    events = EventWriter(job_dir / "events.jsonl")
    try:
        spec = JobSpec.read(job_dir / "spec.json")
        return _train(spec, job_dir, events)
    except BaseException as exc:  # noqa: BLE001 — every failure must reach the events file
        events.emit("failed", error=f"{type(exc).__name__}: {exc}", message=traceback.format_exc()[-4000:])
        return 1


def _train(spec: JobSpec, job_dir: Path, events: EventWriter) -> int:
    import torch

    torch.set_num_threads(max(1, spec.threads))
    start = time.monotonic()
    hp = spec.hyperparameters
    events.emit("started", message=f"{spec.method} fine-tuning of {spec.base_name} ({spec.threads} thread(s))")

    train = read_pairs(spec.train_file)
    validation = read_pairs(spec.validation_file) if spec.validation_file else []
    if not train:
        raise ValueError("no training pairs")
    model = _load_model(spec)

    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    from embedserve.training.evaluate import evaluate_model

    before = evaluate_model(model, validation) if validation else None
    if before:
        events.emit("metrics", metrics=before, stage="before")

    if hp.batch_size > CACHED_LOSS_ABOVE:
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=CACHED_MINI_BATCH)
    else:
        loss = MultipleNegativesRankingLoss(model)
    batch = min(hp.batch_size, len(train))
    steps_per_epoch = math.ceil(len(train) / batch)
    total = steps_per_epoch * hp.epochs
    checkpoints = job_dir / "checkpoints"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=hp.epochs,
        per_device_train_batch_size=batch,
        learning_rate=hp.learning_rate,
        warmup_steps=math.ceil(hp.warmup_ratio * total),
        seed=hp.seed,
        # Duplicate texts in one batch would be "negatives" of themselves under MNRL.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # A checkpoint about every quarter of the run (at least every 200 steps): resuming loses
        # little, and saving (the whole model for full fine-tuning) stays a small share of the time.
        save_strategy="steps",
        save_steps=max(1, min(200, math.ceil(total / 4))),
        save_total_limit=2,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=_dataset(train), loss=loss, callbacks=[_progress_callback(events)]
    )
    resume_from = _last_checkpoint(checkpoints) if spec.resume else None
    if resume_from:
        events.emit("message", message=f"resuming from {Path(resume_from).name}")
    trainer.train(resume_from_checkpoint=resume_from)

    after = evaluate_model(model, validation) if validation else None
    if after:
        events.emit("metrics", metrics=after, stage="after")

    output = Path(spec.output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.parent / f".{output.name}.partial-{spec.job_id}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save(str(temporary))
    counts = {"train": len(train), "validation": len(validation)}
    (temporary / "README.md").write_text(model_card(spec, counts, before, after, time.monotonic() - start))
    if output.exists():
        raise FileExistsError(f"{output} already exists")
    os.replace(temporary, output)
    events.emit("completed", metrics=after, message=str(output))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m embedserve.training.run <job_dir>", file=sys.stderr)
        return 2
    # A job's base is a local folder: it needs no Hub, and offline it makes no call to it (sentence-transformers'
    # model card asks the Hub about the model on every save; bitsandbytes' import asks it for a kernel, see
    # embedserve/quiet_imports.py). Set before anything imports huggingface_hub, which reads it once.
    os.environ["HF_HUB_OFFLINE"] = "1"
    return run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())

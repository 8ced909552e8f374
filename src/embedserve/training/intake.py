"""What a fine-tuning job is asked to do, checked before anything is written or started.

Both API families (the Embedding Service's /fine-tune routes and our /v1/fine_tuning/jobs) build a
`JobRequest` from their own bodies and check it with these, so a bad name, empty data or an
out-of-range hyperparameter gets the same answer from either. No FastAPI here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
from dataclasses import dataclass

from embedserve.errors import InvalidInput, shown
from embedserve.training.data import Parsed
from embedserve.training.defaults import defaults_for
from embedserve.training.spec import Hyperparameters, Method

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass(frozen=True)
class JobRequest:
    """A validated job, as either API family asks for it (the routes resolve the base model)."""

    name: str
    base_name: str
    base_path: str
    method: Method  # what trains
    train: Parsed
    validation: Parsed | None = None
    hyperparameters: Hyperparameters = dataclasses.field(default_factory=Hyperparameters)
    asked: str | None = None  # the method the client asked for, when it differs (qlora -> lora)
    message: str | None = None  # said in the job's message and events from the start
    suffix: str | None = None


def check_name(name: str) -> str:
    """A plain model name (never a path), or 422."""
    if not PLAIN_NAME.match(name) or ".." in name:
        raise InvalidInput(
            f"model name {shown(name)} is not a plain name: letters, digits, '.', '_' and '-', at most 96 "
            "characters, starting with a letter or digit (no '/', no '..')",
            param="model_name",
        )
    return name


def check_hyperparameters(hp: Hyperparameters) -> Hyperparameters:
    problems = []
    if hp.lora_r <= 0:
        problems.append(f"r must be positive (got {hp.lora_r})")
    if not 0 <= hp.lora_dropout < 1:
        problems.append(f"lora_dropout must be in [0, 1) (got {hp.lora_dropout})")
    if hp.epochs <= 0 or hp.batch_size <= 0 or hp.learning_rate <= 0 or not 0 <= hp.warmup_ratio < 1:
        problems.append("epochs, batch size and learning rate must be positive and warm-up in [0, 1)")
    if problems:
        raise InvalidInput("; ".join(problems), param="hyperparameters")
    return hp


def default_hyperparameters(method: str) -> Hyperparameters:
    """The measured defaults of `method` (training/defaults.py: LoRA's learning rate is 10x full's)."""
    return defaults_for(method)  # type: ignore[arg-type]


@functools.cache
def qlora_support() -> tuple[bool, str]:
    """Whether 4-bit QLoRA can train here, and why not: bitsandbytes is imported (and a 4-bit layer
    tried, training/run.py) only where it is installed, and only once."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return False, "4-bit QLoRA needs bitsandbytes, which is not installed on this server"
    try:
        from embedserve.training.run import qlora_support as trainer_says  # tries a 4-bit layer: once
    except ImportError:
        return False, "4-bit QLoRA is not supported by this server's training package"
    return trainer_says()


def check_pairs(parsed: Parsed, what: str) -> Parsed:
    if not parsed.pairs:
        raise InvalidInput(
            f"no valid pairs in the {what}: {parsed.ignored} lines ignored (each line must be "
            "'query<TAB>passage', or a JSON object with 'anchor' and 'positive')",
            param=what,
        )
    return parsed

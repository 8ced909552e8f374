"""Our engine, without the server around it: texts in, finished vectors out.

Every step is the one the server takes for POST /v1/embeddings, called directly:

- the model is resolved as the server resolves an operator's `--model` (models/registry.py) and
  built by the server's factory (backends/factory.py: auto mode, fidelity guard, ONNX cache),
  with the prompt profile and the family's length limit the model pool gives it
  (engine/model_pool.py `_build`);
- texts get the profile's prefix and are tokenized by engine/processing.py `tokenize_inputs`;
- the token-id lists are planned into batches by engine/batcher.py `plan_batches` (shortest
  first, least padding), each padded by `Batch.from_ids` and run through `Backend.encode` for
  the outputs asked, on `--model-workers` threads as the server's worker runs them;
- dense vectors are finished by `processing.finish_dense` with the model's own normalisation.

Padding is masked, so a vector does not depend on which other texts shared its batch (fp32:
equal within float rounding, ~1e-7); bulk mode plans over a whole shard at once rather than
over what happens to be queued, which only changes the padding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedserve.backends.base import Backend, Batch, Outputs, SparseVector, TokenIds
from embedserve.engine import processing
from embedserve.engine.batcher import plan_batches
from embedserve.engine.model_pool import configure
from embedserve.models.registry import ModelResolver, ResolvedModel
from embedserve.models.tasks import Task, task_names
from embedserve.settings import Settings

OUTPUTS = {"dense": Task.EMBED, "sparse": Task.SPARSE}
InputType = str | None  # "query", "document" or None (the model's default prompt, as the server without input_type)


class CorpusModelError(ValueError):
    """The model can't give what the job asks (an output it doesn't have)."""


@dataclass
class Encoded:
    """Finished outputs of a list of texts, in their order (None: not asked)."""

    dense: np.ndarray | None  # float32 [n, dimension], normalised as the model's own config says
    sparse: list[SparseVector] | None

    def __len__(self) -> int:
        return len(self.dense) if self.dense is not None else len(self.sparse or ())


class _Pending:
    """One input's token ids and its row, as `plan_batches` sorts them by length."""

    __slots__ = ("ids", "row")

    def __init__(self, row: int, ids: TokenIds):
        self.row, self.ids = row, ids

    def __len__(self) -> int:
        return len(self.ids)


def resolve_model(settings: Settings, name: str) -> ResolvedModel:
    """The folder `name` stands for, found as the server finds a `--model` name (paths allowed)."""
    return ModelResolver(models_dir=settings.models_dir, revision=settings.revision).resolve(name)


def model_fingerprint(path: Path) -> str:
    """Which weights a folder holds: a hash of every file's relative path and size (not mtimes, so the
    same model reinstalled or copied elsewhere is the same model)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            try:
                size = file.stat().st_size
            except OSError:
                continue
            digest.update(f"{file.relative_to(path)}\0{size}\n".encode())
    return digest.hexdigest()[:16]


def tasks_for(outputs: Sequence[str]) -> frozenset[Task]:
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown or not outputs:
        raise CorpusModelError(f"--outputs takes {' and/or '.join(OUTPUTS)}, not {','.join(outputs) or 'nothing'}")
    return frozenset(OUTPUTS[o] for o in outputs)


class CorpusEncoder:
    """One model loaded as the server loads it, encoding lists of texts as the server does."""

    def __init__(
        self,
        settings: Settings,
        model: str,
        *,
        outputs: Sequence[str] = ("dense",),
        input_type: InputType = None,
        resolved: ResolvedModel | None = None,
        backend_factory: Callable[[Settings, Path], Backend] | None = None,
    ):
        if backend_factory is None:
            from embedserve.backends.factory import build_backend as backend_factory
        self.settings = settings
        self.tasks = tasks_for(outputs)
        self.model = resolved or resolve_model(settings, model)
        self.backend = backend = backend_factory(settings, self.model.path)
        prompts = configure(backend, self.model.id, self.model.path)  # as the model pool does
        info = backend.info
        missing = self.tasks - info.tasks
        if missing:
            raise CorpusModelError(
                f"model {self.model.id!r} gives {', '.join(task_names(info.tasks))}, not {', '.join(task_names(missing))}"
            )
        if backend.uses_roles:
            raise CorpusModelError(f"model {self.model.id!r} encodes queries and documents apart; not supported in bulk")
        self.prefix = prompts.prefix(input_type)
        workers = settings.model_workers
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="corpus") if workers > 1 else None

    @property
    def dimension(self) -> int:
        return self.backend.info.dimension

    @property
    def mode(self) -> str:
        """What runs, e.g. "onnx fp32" or "torch bf16"."""
        info = self.backend.info
        return f"{info.backend} {info.dtype}"

    def encode(self, texts: Sequence[str]) -> Encoded:
        if not texts:
            empty = np.zeros((0, self.dimension), np.float32) if Task.EMBED in self.tasks else None
            return Encoded(empty, [] if Task.SPARSE in self.tasks else None)
        backend = self.backend
        sequences = processing.tokenize_inputs(
            backend, self.model.id, texts, prefix=self.prefix, truncate=self.settings.truncate
        )
        plan = plan_batches(
            [_Pending(row, ids) for row, ids in enumerate(sequences)],
            max_tokens=self.settings.max_batch_tokens,
            max_size=self.settings.max_batch_size,
            overhead=backend.batch_overhead_tokens,
        )
        run = self._threads.map if self._threads is not None else map
        dense: np.ndarray | None = None
        sparse: list[SparseVector | None] = [None] * len(texts)
        for batch, outputs in zip(plan, run(self._run, plan), strict=True):
            rows = np.fromiter((item.row for item in batch), np.int64, len(batch))
            if Task.EMBED in self.tasks:
                if dense is None:
                    dense = np.empty((len(texts), outputs.dense.shape[1]), np.float32)
                dense[rows] = outputs.dense
            if Task.SPARSE in self.tasks:
                for row, vector in zip(rows.tolist(), outputs.sparse, strict=True):
                    sparse[row] = vector
        if dense is not None:
            dense = processing.finish_dense(dense, normalize=backend.info.normalize)
        return Encoded(dense, sparse if Task.SPARSE in self.tasks else None)  # type: ignore[arg-type]

    def _run(self, batch: list[_Pending]) -> Outputs:
        padded = Batch.from_ids([item.ids for item in batch], pad_id=self.backend.pad_id)
        return self.backend.encode(padded, self.tasks)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False)

"""The embedding service: what the HTTP layer calls. Owns loaded models and their workers.

Validates inputs in model terms (empty, token ids out of vocabulary, too long), tokenizes
off the event loop, queues on the model's worker, then normalises and cuts dimensions.
Routes get plain numpy float32 arrays back; they never see tensors or backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedserve.backends.base import Backend, ModelInfo, TokenIds
from embedserve.engine.worker import EngineObserver, ModelWorker
from embedserve.errors import BadRequest, InvalidInput, ModelNotFound, NotReady
from embedserve.models.registry import ModelResolver, ResolvedModel
from embedserve.settings import Settings

log = logging.getLogger(__name__)

BackendFactory = Callable[[Path], Backend]
Inputs = Sequence[str] | Sequence[Sequence[int]]


@dataclass
class LoadedModel:
    id: str
    aliases: frozenset[str]
    source: str
    path: Path
    worker: ModelWorker
    loaded_at: float = field(default_factory=time.time)

    @property
    def info(self) -> ModelInfo:
        return self.worker.backend.info


@dataclass(frozen=True)
class EmbedResult:
    model: str
    vectors: np.ndarray  # float32 [n, dim]
    prompt_tokens: int


class EmbeddingService:
    def __init__(
        self,
        settings: Settings,
        backend_factory: BackendFactory,
        *,
        resolver: ModelResolver | None = None,
        observer: EngineObserver | None = None,
    ):
        self.settings = settings
        self._factory = backend_factory
        self._resolver = resolver or ModelResolver(models_dir=settings.models_dir, revision=settings.revision)
        self._observer = observer or EngineObserver()
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()

    # ---- models -------------------------------------------------------------------------
    @property
    def models(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def default_model(self) -> LoadedModel | None:
        return next(iter(self._models.values()), None)

    def get(self, name: str | None) -> LoadedModel:
        """The loaded model a client means by `name` (its id or any alias, any case)."""
        if name is None:
            if (model := self.default_model) is None:
                if self._loading:
                    raise NotReady("models are still loading; retry shortly")
                raise ModelNotFound("no model is loaded", param="model")
            return model
        for model in self._models.values():
            if name in model.aliases:
                return model
        lowered = name.lower()
        for model in self._models.values():
            if lowered in {a.lower() for a in model.aliases}:
                return model
        if self._loading:
            raise NotReady(f"models are still loading ({', '.join(sorted(self._loading))}); retry shortly")
        served = ", ".join(sorted(self._models)) or "none"
        raise ModelNotFound(f"model '{name}' is not served here (served: {served})", param="model")

    async def load_all(self, names: Sequence[str]) -> None:
        """Load the start-up models; until each is in, requests for it get 503, not 404."""
        self._loading.update(names)
        try:
            for name in names:
                await self.load(name)
        finally:
            self._loading.difference_update(names)

    async def load(self, name: str) -> LoadedModel:
        self._loading.add(name)
        try:
            return await self._load(name)
        finally:
            self._loading.discard(name)

    async def _load(self, name: str) -> LoadedModel:
        resolved: ResolvedModel = await asyncio.to_thread(self._resolver.resolve, name)
        if resolved.id in self._models:
            return self._models[resolved.id]
        started = time.perf_counter()
        backend = await asyncio.to_thread(self._factory, resolved.path)
        worker = ModelWorker(
            resolved.id,
            backend,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            observer=self._observer,
        )
        worker.start()
        model = LoadedModel(resolved.id, resolved.aliases, resolved.source, resolved.path, worker)
        self._models[resolved.id] = model
        log.info(
            "model ready",
            extra={"model": resolved.id, "source": resolved.source, "seconds": round(time.perf_counter() - started, 2)},
        )
        return model

    async def close(self) -> None:
        await asyncio.gather(*(m.worker.close(self.settings.graceful_timeout) for m in self._models.values()))
        self._models.clear()

    # ---- embedding ----------------------------------------------------------------------
    async def embed(
        self,
        name: str | None,
        inputs: Inputs,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        prompt: str | None = None,
    ) -> EmbedResult:
        model = self.get(name)
        info = model.info
        self._check_inputs(inputs)
        if dimensions is not None and not 1 <= dimensions <= info.dimension:
            raise BadRequest(
                f"dimensions must be between 1 and {info.dimension} for model '{model.id}', got {dimensions}",
                param="dimensions",
            )
        with model.worker.admit():
            sequences = await asyncio.to_thread(self._tokenize, model, inputs, prompt)
            tokens = sum(len(s) for s in sequences)
            self._observer.tokens(model.id, tokens)
            vectors = await model.worker.embed(sequences)
        if dimensions is not None and dimensions < info.dimension:
            vectors = np.ascontiguousarray(vectors[:, :dimensions])
            normalize = True
        if info.normalize if normalize is None else normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(model.id, vectors.astype(np.float32, copy=False), tokens)

    def _check_inputs(self, inputs: Inputs) -> None:
        if len(inputs) == 0:
            raise InvalidInput("'input' must not be empty", param="input")
        if len(inputs) > self.settings.max_inputs:
            raise InvalidInput(
                f"'input' has {len(inputs)} items; at most {self.settings.max_inputs} are allowed per request",
                param="input",
            )
        for i, item in enumerate(inputs):
            if len(item) == 0:
                kind = "string" if isinstance(item, str) else "token list"
                raise InvalidInput(f"input[{i}] is an empty {kind}", param=f"input[{i}]")
            if isinstance(item, str) and not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON, not text
                    raise InvalidInput(
                        f"input[{i}] is not valid Unicode text (it has an unpaired surrogate)", param=f"input[{i}]"
                    ) from None

    def _tokenize(self, model: LoadedModel, inputs: Inputs, prompt: str | None) -> list[TokenIds]:
        backend, info = model.worker.backend, model.info
        truncate = self.settings.truncate
        if isinstance(inputs[0], str):
            texts = [prompt + t for t in inputs] if prompt else list(inputs)
            sequences = backend.tokenize(texts, truncate=truncate)
        else:
            for i, ids in enumerate(inputs):
                bad = next((t for t in ids if not 0 <= t < info.vocab_size), None)
                if bad is not None:
                    raise InvalidInput(
                        f"input[{i}] has token id {bad}, outside the vocabulary of model '{model.id}' "
                        f"(0..{info.vocab_size - 1})",
                        param=f"input[{i}]",
                    )
            sequences = backend.wrap_ids(inputs, truncate=truncate)
        if not truncate:
            for i, seq in enumerate(sequences):
                if len(seq) > info.max_seq_length:
                    raise InvalidInput(
                        f"input[{i}] has {len(seq)} tokens; model '{model.id}' accepts at most "
                        f"{info.max_seq_length} and truncation is off",
                        param=f"input[{i}]",
                    )
        return sequences

"""The embedding service: what every HTTP route calls to embed text.

Validates inputs in model terms (empty, invalid text, token ids out of vocabulary, too
long), applies the model's query/document prefix, tokenizes off the event loop, queues on
the model's worker, then normalises and cuts dimensions. Routes get numpy float32 arrays
back; they never see tensors or backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedserve.backends.base import TokenIds
from embedserve.engine.model_pool import BackendFactory, LoadedModel, ModelPool
from embedserve.engine.worker import EngineObserver
from embedserve.errors import BadRequest, InvalidInput, Overloaded, TooManyTokens
from embedserve.models.families import InputType
from embedserve.models.registry import ModelResolver
from embedserve.settings import Settings

INLINE_TOKENIZE_INPUTS = 8  # requests at most this small are tokenized on the event loop
INLINE_TOKENIZE_CHARS = 2048

Inputs = Sequence[str] | Sequence[Sequence[int]]


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
        self._observer = observer or EngineObserver()
        self.pool = ModelPool(settings, backend_factory, resolver=resolver, observer=self._observer)

    # ---- models (delegated to the pool) --------------------------------------------------
    @property
    def models(self) -> list[LoadedModel]:
        return self.pool.models

    @property
    def default_model(self) -> LoadedModel | None:
        return self.pool.default_model

    def get(self, name: str | None) -> LoadedModel:
        return self.pool.get(name)

    async def load_all(self, names: Sequence[str]) -> None:
        await self.pool.load_all(names)

    async def load(self, name: str) -> LoadedModel:
        return await self.pool.load(name)

    async def unload(self, name: str | None) -> LoadedModel:
        return await self.pool.unload(name)

    async def close(self) -> None:
        await self.pool.close()

    def all_queues_full(self) -> Overloaded | None:
        """The 429 to answer at once when every loaded model's queue is full (else None).
        Runs before every queueing request's body is read: no copy of the model list."""
        models = self.pool.loaded()
        for model in models:
            if not model.worker.full:
                return None
        if not models:
            return None
        if len(models) == 1:
            return next(iter(models)).worker.overloaded()
        return Overloaded("every model's queue is full; retry later")

    # ---- embedding ----------------------------------------------------------------------
    async def embed(
        self,
        name: str | None,
        inputs: Inputs,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: InputType | None = None,
    ) -> EmbedResult:
        """Vectors for `inputs` (texts or token-id lists), in order.

        `normalize=None` keeps the model's own choice; `input_type` picks the model's query or
        document prefix; `dimensions` cuts the vectors and renormalises them.
        """
        self._check_inputs(inputs)
        model = await self.pool.get_or_load(name)
        info = model.info
        if dimensions is not None and not 1 <= dimensions <= info.dimension:
            raise BadRequest(
                f"dimensions must be between 1 and {info.dimension} for model '{model.id}', got {dimensions}",
                param="dimensions",
            )
        prefix = model.prompts.prefix(input_type)
        with model.worker.admit() as admission:
            if self._small(inputs):  # a thread hop costs more than tokenizing a few sentences
                sequences = self._tokenize(model, inputs, prefix)
            else:
                sequences = await asyncio.to_thread(self._tokenize, model, inputs, prefix)
            tokens = sum(len(s) for s in sequences)
            self._check_tokens(tokens)
            self._observer.tokens(model.id, tokens)
            # --request-timeout bounds the queue wait and inference: the worker fails the request then.
            vectors = await model.worker.embed(sequences, admission)
        if dimensions is not None and dimensions < info.dimension:
            vectors = np.ascontiguousarray(vectors[:, :dimensions])
            normalize = True
        if info.normalize if normalize is None else normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return EmbedResult(model.id, vectors.astype(np.float32, copy=False), tokens)

    def _check_tokens(self, tokens: int) -> None:
        limit = self.settings.max_request_tokens
        if tokens > limit:
            raise TooManyTokens(
                f"the request's inputs hold {tokens} tokens (after truncation); at most {limit} are allowed "
                "per request (--max-request-tokens): send them in several requests",
                param="input",
            )

    @staticmethod
    def _small(inputs: Inputs) -> bool:
        """Whether to tokenize on the event loop: a few short texts (~20 us each with the Rust
        tokenizer) cost less there than the ~100 us of handing them to a thread, which
        profiling showed as a tenth of the loop's time under single-sentence traffic."""
        return len(inputs) <= INLINE_TOKENIZE_INPUTS and sum(len(item) for item in inputs) <= INLINE_TOKENIZE_CHARS

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

    def _tokenize(self, model: LoadedModel, inputs: Inputs, prefix: str) -> list[TokenIds]:
        backend, info = model.worker.backend, model.info
        truncate = self.settings.truncate
        if isinstance(inputs[0], str):
            texts = [prefix + t for t in inputs] if prefix else list(inputs)
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
                        # "at least": a long text is tokenized only as far as needed to know it is too long
                        f"input[{i}] has at least {len(seq)} tokens; model '{model.id}' accepts at most "
                        f"{info.max_seq_length} and truncation is off",
                        param=f"input[{i}]",
                    )
        return sequences

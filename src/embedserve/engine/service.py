"""The encoding service: what every HTTP route calls to turn inputs into outputs.

A route asks for tasks (dense, sparse, multi-vector) of a model, never for its class. The
service checks the model does them (400 naming its tasks otherwise) before anything is queued,
validates the inputs, applies the model's query/document prefix, tokenizes (off the event loop
unless tiny), queues on the model's worker, and finishes the outputs (engine/processing.py:
the same plain functions bulk embedding uses). Routes get numpy arrays and SparseVectors back;
they never see tensors or backends. The model pool is reached through `service.pool` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedserve.backends.base import ModelInfo, Outputs, SparseVector, Token, TokenIds
from embedserve.engine import processing
from embedserve.engine.model_pool import BackendFactory, LoadedModel, ModelPool
from embedserve.engine.processing import Inputs
from embedserve.engine.pending import DENSE
from embedserve.engine.token_ids import readable_inputs
from embedserve.engine.worker import EngineObserver
from embedserve.errors import InvalidInput, Overloaded, PayloadTooLarge, TooManyTokens, WrongTask
from embedserve.models.families import InputType
from embedserve.models.registry import ModelResolver
from embedserve.models.tasks import Task, task_names
from embedserve.settings import Settings

INLINE_TOKENIZE_INPUTS = 8  # requests at most this small are tokenized on the event loop
INLINE_TOKENIZE_CHARS = 2048

_TASK_WORDS = {
    Task.EMBED: "dense embeddings", Task.SPARSE: "sparse embeddings", Task.MULTIVECTOR: "multi-vector embeddings",
    Task.SCORE: "scoring (rerank)",
}
SCORE = frozenset({Task.SCORE})


@dataclass(frozen=True)
class EmbedResult:
    model: str
    vectors: np.ndarray  # float32 [n, dim]
    prompt_tokens: int


@dataclass(frozen=True)
class EncodeResult:
    """The outputs asked for, per input in order (None: not asked)."""

    model: LoadedModel
    dense: np.ndarray | None
    sparse: list[SparseVector] | None
    multivector: list[np.ndarray] | None
    prompt_tokens: int


@dataclass(frozen=True)
class ScoreResult:
    model: LoadedModel
    scores: np.ndarray  # float32 [documents, labels]
    prompt_tokens: int


@dataclass(frozen=True)
class SparseOptions:
    top_k: int | None = None  # keep the heaviest k terms
    min_weight: float | None = None  # drop terms lighter than this


def require_tasks(model: LoadedModel, tasks: frozenset[Task]) -> None:
    """400 naming the model and its tasks when it lacks one of `tasks`."""
    have = model.info.tasks
    for task in Task:
        if task in tasks and task not in have:
            raise WrongTask(model.id, _TASK_WORDS[task], task_names(have))


def label_names(info: ModelInfo) -> tuple[str, ...]:
    """A scoring model's label names in id order: its config's, else `LABEL_i` (transformers' default)."""
    count = info.score_labels or 1
    return info.labels if len(info.labels) == count else tuple(f"LABEL_{i}" for i in range(count))


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

    def all_queues_full(self) -> Overloaded | None:
        """The 429 to answer at once when every loaded model's queue is full (else None).
        Runs before every queueing request's body is read."""
        return self.overloaded() if self.queue_room() == 0 else None

    def overloaded(self) -> Overloaded:
        """The 429 of full queues: the model's own words when one model is loaded."""
        models = self.pool.loaded()
        if len(models) == 1:
            return next(iter(models)).worker.overloaded()
        return Overloaded("every model's queue is full; retry later")

    def queue_room(self) -> int | None:
        """Requests the loaded models' queues can still admit, together; None when no model is loaded
        or a queue's room is not known here (an --api-processes front-end). No copy of the model list."""
        room = 0
        models = self.pool.loaded()
        for model in models:
            free = model.worker.room
            if free is None:
                return None
            room += free
        return room if models else None

    def when_room_frees(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the event loop) each time a request leaves a model's queue."""
        self.pool.room_listeners.append(listener)

    # ---- encoding ----------------------------------------------------------------------
    async def embed(
        self,
        name: str | None,
        inputs: Inputs,
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: InputType | None = None,
    ) -> EmbedResult:
        """Dense vectors for `inputs` (texts or token-id lists), in order.

        `normalize=None` keeps the model's own choice; `input_type` picks the model's query or
        document prefix; `dimensions` cuts the vectors and renormalises them.
        """
        result = await self.encode(name, inputs, DENSE, dimensions=dimensions, normalize=normalize, input_type=input_type)
        return EmbedResult(result.model.id, result.dense, result.prompt_tokens)

    async def encode(
        self,
        name: str | None,
        inputs: Inputs,
        tasks: frozenset[Task],
        *,
        dimensions: int | None = None,
        normalize: bool | None = None,
        input_type: InputType | None = None,
        sparse: SparseOptions | None = None,
        truncate: bool | None = None,
        prompt_name: str | None = None,
    ) -> EncodeResult:
        """Every output in `tasks` for `inputs`, from one forward pass per batch.

        `prompt_name` picks one of the model's own prompts by name (TEI's field) instead of the
        query/document prefix; `truncate` overrides --truncate for this request.
        """
        processing.check_inputs(inputs, self.settings.max_inputs)
        model = await self.pool.get_or_load(name)
        require_tasks(model, tasks)
        info = model.info
        if Task.EMBED in tasks:
            processing.check_dimensions(dimensions, info.dimension, model.id)
        role = None
        if model.worker.backend.uses_roles:
            if not isinstance(inputs[0], str):
                raise InvalidInput(f"model '{model.id}' encodes text only: it needs its query/document markers", param="input")
            role = input_type = input_type or "document"  # queries are encoded apart only when asked for
        prefix = model.prompts.prefix(input_type) if prompt_name is None else self._prompt(model, prompt_name)
        truncate = self.settings.truncate if truncate is None else truncate
        backend = model.worker.backend

        def tokenize() -> tuple[list[TokenIds], None]:
            readable = inputs
            if not isinstance(inputs[0], str):  # the model's own ids, or OpenAI's cl100k ids of a text
                readable = readable_inputs(backend, model.id, inputs, self.settings.token_ids)
            return processing.tokenize_inputs(
                backend, model.id, readable, prefix=prefix, truncate=truncate, role=role
            ), None

        outputs, tokens = await self._run(model, self._small(inputs), tokenize, tasks, role)
        dense = outputs.dense
        if dense is not None:
            dense = processing.finish_dense(
                dense, normalize=info.normalize if normalize is None else normalize, dimensions=dimensions
            )
        terms = outputs.sparse
        if terms is not None and sparse is not None and (sparse.top_k is not None or sparse.min_weight is not None):
            terms = [processing.finish_sparse(v, top_k=sparse.top_k, min_weight=sparse.min_weight) for v in terms]
        return EncodeResult(model, dense, terms, outputs.multivector, tokens)

    async def score(
        self, name: str | None, query: str, documents: Sequence[str], *, raw: bool = False, truncate: bool | None = None
    ) -> ScoreResult:
        """How well each document answers `query`: a cross-encoder's score of each (query, document)
        pair, after the model's own activation (a sigmoid for one label) unless `raw`."""
        processing.check_query(query)
        processing.check_inputs(documents, self.settings.max_inputs)
        model = await self.pool.get_or_load(name)
        require_tasks(model, SCORE)
        backend = model.worker.backend
        truncate = self.settings.truncate if truncate is None else truncate
        pairs = [(query, document) for document in documents]
        outputs, tokens = await self._run(
            model, self._small(documents), lambda: backend.tokenize_pairs(pairs, truncate=truncate), SCORE
        )
        logits = outputs.scores
        return ScoreResult(model, logits if raw else backend.activate_scores(logits), tokens)

    async def classify(
        self, name: str | None, sequences: Sequence[Sequence[str]], *, raw: bool = False, truncate: bool | None = None
    ) -> ScoreResult:
        """Every label's score of each sequence (one text, or a pair) through a sequence classifier
        (TEI's /predict): a softmax over the labels, a sigmoid for one label, unless `raw`."""
        processing.check_sequences(sequences, self.settings.max_inputs)
        model = await self.pool.get_or_load(name)
        require_tasks(model, SCORE)
        backend = model.worker.backend
        truncate = self.settings.truncate if truncate is None else truncate
        texts = [text for sequence in sequences for text in sequence]
        outputs, tokens = await self._run(
            model, self._small(texts),
            lambda: processing.tokenize_sequences(backend, model.id, sequences, truncate=truncate), SCORE,
        )
        logits = outputs.scores
        return ScoreResult(model, logits if raw else processing.label_probabilities(logits), tokens)

    async def tokens(
        self, name: str | None, texts: Sequence[str], *, add_special_tokens: bool = True, prompt_name: str | None = None
    ) -> list[list[Token]]:
        """Every token of each text (TEI's /tokenize), after the prompt the model would put first
        (`prompt_name`'s, else its default). Nothing is truncated or queued, so a request is bounded
        by --max-request-tokens twice: in characters before tokenizing (the Rust tokenizer's memory
        grows with its input) and in tokens after."""
        processing.check_inputs(texts, self.settings.max_inputs)
        model = await self.pool.get_or_load(name)
        prefix = model.prompts.prefix(None) if prompt_name is None else self._prompt(model, prompt_name)
        texts = [prefix + text for text in texts] if prefix else list(texts)
        chars, limit = sum(map(len, texts)), self.settings.max_request_tokens
        if chars > limit:
            raise PayloadTooLarge(
                f"the texts hold {chars} characters; /tokenize reads at most {limit} per request (--max-request-tokens)",
                param="input",
            )
        backend = model.worker.backend

        def tokenize() -> list[list[Token]]:
            return backend.tokens(texts, add_special_tokens=add_special_tokens)

        result = tokenize() if self._small(texts) else await asyncio.to_thread(tokenize)
        self._check_tokens(sum(map(len, result)))
        return result

    async def decode(
        self, name: str | None, ids: Sequence[Sequence[int]], *, skip_special_tokens: bool = True
    ) -> list[str]:
        """The text of each id sequence as the model's tokenizer decodes it (TEI's /decode); an
        empty sequence decodes to "". Ids outside the vocabulary are 422s naming the sequence."""
        processing.check_count(ids, self.settings.max_inputs)  # an empty id list is allowed: it decodes to ""
        self._check_tokens(sum(map(len, ids)))
        model = await self.pool.get_or_load(name)
        backend = model.worker.backend
        processing.check_token_ids(ids, backend.info.vocab_size, model.id)

        def decode() -> list[str]:
            return backend.decode(ids, skip_special_tokens=skip_special_tokens)

        small = sum(map(len, ids)) <= INLINE_TOKENIZE_CHARS // 4  # about as many ids as a small request's tokens
        return decode() if small else await asyncio.to_thread(decode)

    async def _run(
        self,
        model: LoadedModel,
        small: bool,
        tokenize: Callable[[], tuple[list[TokenIds], list[TokenIds] | None]],
        tasks: frozenset[Task],
        role: str | None = None,
    ) -> tuple[Outputs, int]:
        """Admit one request, tokenize it (on the event loop when `small`: a thread hop costs more
        than a few sentences), bound its tokens and queue it; its outputs and token count."""
        with model.worker.admit() as admission:
            sequences, types = tokenize() if small else await asyncio.to_thread(tokenize)
            tokens = sum(len(s) for s in sequences)
            self._check_tokens(tokens)
            self._observer.tokens(model.id, tokens)
            # --request-timeout bounds the queue wait and inference: the worker fails the request then.
            outputs = await model.worker.encode(sequences, admission, tasks, role, types)
        return outputs, tokens

    @staticmethod
    def _prompt(model: LoadedModel, name: str) -> str:
        prompts = model.info.prompts
        if name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise InvalidInput(f"model '{model.id}' has no prompt named '{name}' (its prompts: {known})", param="prompt_name")
        return prompts[name]

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

"""How relevant each document is to a query, with whatever the model can score with.

- a cross-encoder (`score`): each (query, document) pair through the model, its own activation
  (a sigmoid for one label) unless `raw`;
- a late-interaction model (`multivector`: ColBERT, BGE-M3): MaxSim between the query's vectors
  (encoded once, as a query) and each document's, summed or averaged over the query's vectors
  as the model says (`ModelInfo.multivector_similarity`);
- a dense embedder (`embed`): the cosine of the query's vector (with the model's query prefix) and
  each document's (document prefix).

Routes call `relevance`; the scores come back in the documents' order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedserve.engine import processing
from embedserve.engine.model_pool import LoadedModel
from embedserve.engine.pending import DENSE
from embedserve.engine.scoring import maxsim
from embedserve.engine.service import SCORE, require_tasks
from embedserve.errors import BadRequest
from embedserve.models.tasks import Task

MULTIVECTOR = frozenset({Task.MULTIVECTOR})


@dataclass(frozen=True)
class Relevance:
    model: LoadedModel
    scores: np.ndarray  # float32 [documents]
    prompt_tokens: int
    method: str  # "cross-encoder" | "maxsim" | "meanmaxsim" | "cosine"


async def relevance(
    service, name: str | None, query: str, documents: Sequence[str], *, raw: bool = False, truncate: bool | None = None
) -> Relevance:
    processing.check_query(query)
    model = await service.pool.get_or_load(name)
    tasks = model.info.tasks
    if Task.SCORE in tasks:
        labels = model.info.score_labels or 1
        if labels != 1:  # refused before any pair is scored
            raise BadRequest(f"model '{model.id}' scores {labels} labels; ranking needs a one-score cross-encoder", param="model")
        result = await service.score(model.id, query, documents, raw=raw, truncate=truncate)
        return Relevance(model, result.scores[:, 0], result.prompt_tokens, "cross-encoder")
    if Task.MULTIVECTOR not in tasks and Task.EMBED not in tasks:
        require_tasks(model, SCORE)  # it can't score at all: 400 naming the model's tasks
    late = Task.MULTIVECTOR in tasks
    wanted = MULTIVECTOR if late else DENSE
    options = {"truncate": truncate} if late else {"truncate": truncate, "normalize": True}
    asked, answered = await asyncio.gather(
        service.encode(model.id, [query], wanted, input_type="query", **options),
        service.encode(model.id, documents, wanted, input_type="document", **options),
    )
    tokens = asked.prompt_tokens + answered.prompt_tokens
    if late:
        method = model.info.multivector_similarity or "maxsim"
        q = asked.multivector[0]
        scores = [maxsim(q, d, mean=method == "meanmaxsim") for d in answered.multivector]
        return Relevance(model, np.asarray(scores, dtype=np.float32), tokens, method)
    return Relevance(model, (answered.dense @ asked.dense[0]).astype(np.float32), tokens, "cosine")

"""vLLM's scoring route: POST /score (and its older name /v1/score).

vLLM takes the two sides of each pair under one of four pairs of keys: `queries`/`documents`,
`queries`/`items`, `data_1`/`data_2` or `text_1`/`text_2`. A string on the left and a list on
the right scores the one query against each; two lists are zipped (same length); two strings
are one pair. The answer is `{"id", "object": "list", "created", "model", "data": [{"index",
"object": "score", "score"}], "usage"}`, one entry per pair in input order.

Like vLLM we score with any model that can: a cross-encoder's score, MaxSim for ColBERT and
BGE-M3, cosine for dense embedders (engine/ranking.py). vLLM needs one server per model; here
`model` picks any loaded or loadable one. Zipped pairs with different queries are scored as one
request per distinct query, all queued at once, so they share batches.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from embedserve.api.compat import relabel, service, validate_body
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, Scope, declare
from embedserve.engine.ranking import relevance
from embedserve.errors import InvalidInput
from embedserve.models.tasks import Task

router = APIRouter(tags=["vLLM"])

PAIRINGS = (("queries", "documents"), ("queries", "items"), ("data_1", "data_2"), ("text_1", "text_2"))
_SHAPES = ", ".join(f"'{left}' with '{right}'" for left, right in PAIRINGS)
_EXAMPLES = {
    "queries": {
        "summary": "One query, several documents",
        "value": {"queries": "What is the capital of France?", "documents": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]},
    },
    "text_pairs": {
        "summary": "Zipped pairs",
        "value": {"text_1": ["What is the capital of France?", "Where is Munich?"], "text_2": ["Paris is the capital of France.", "Munich is in Bavaria."]},
    },
}


class ScoreOptions(BaseModel):
    """Everything but the two sides, which `_side` checks under their own names. Other keys of
    vLLM's request (`instruction`, `truncation_side`, ...) are ignored, as vLLM ignores unknown ones."""

    model: StrictStr | None = None
    raw_scores: StrictBool = Field(False, description="An embedserve extension: a cross-encoder's raw logits.")
    use_activation: StrictBool | None = Field(None, description="vLLM's name for the opposite of `raw_scores`.")
    truncate_prompt_tokens: StrictInt | None = Field(None, description="Accepted; inputs are cut at the model's maximum.")
    encoding_format: StrictStr | None = Field(None, description="Accepted and ignored: scores are numbers.")
    priority: StrictInt | None = Field(None, description="Accepted and ignored.")


def _side(value: Any, name: str) -> str | list[str]:
    """One side of the pairs: a non-empty string, or a non-empty list of them."""
    if isinstance(value, str):
        if not value:
            raise InvalidInput(f"'{name}' is empty", param=name)
        return value
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"'{name}' must be a string or a non-empty list of strings", param=name)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"'{name}[{index}]' must be a string", param=f"{name}[{index}]")
        if not item:
            raise InvalidInput(f"'{name}[{index}]' is empty", param=f"{name}[{index}]")
    return value


def _pairs(
    left: str | list[str], right: str | list[str], names: tuple[str, str]
) -> list[tuple[str, list[int], list[str]]]:
    """(query, pair indices, documents) per distinct query, in the order the pairs came."""
    if isinstance(left, list) and len(left) == 1 and isinstance(right, list) and len(right) > 1:
        left = left[0]  # vLLM reads a one-item left list against many as 1:N
    if isinstance(left, str):
        documents = [right] if isinstance(right, str) else right
        return [(left, list(range(len(documents))), documents)]
    if isinstance(right, str):
        raise InvalidInput(f"'{names[0]}' is a list, so '{names[1]}' must be a list of the same length", param=names[1])
    if len(left) != len(right):
        raise InvalidInput(
            f"'{names[0]}' has {len(left)} items and '{names[1]}' {len(right)}: zipped pairs need the same count",
            param=names[1],
        )
    groups: dict[str, tuple[list[int], list[str]]] = {}
    for index, (query, document) in enumerate(zip(left, right, strict=True)):
        indices, documents = groups.setdefault(query, ([], []))
        indices.append(index)
        documents.append(document)
    return [(query, indices, documents) for query, (indices, documents) in groups.items()]


def _parse(body: dict[str, Any]) -> tuple[ScoreOptions, str | list[str], str | list[str], tuple[str, str]]:
    found = [pair for pair in PAIRINGS if pair[0] in body and pair[1] in body]
    if len(found) != 1:
        raise InvalidInput(f"a score body pairs its texts under exactly one of: {_SHAPES}", param=None)
    names = found[0]
    others = {key: value for key, value in body.items() if key not in names}
    stray = [key for pair in PAIRINGS for key in pair if key in others]
    if stray:
        raise InvalidInput(f"'{stray[0]}' does not belong with '{names[0]}' and '{names[1]}'", param=stray[0])
    asked = validate_body(ScoreOptions, others)
    return asked, _side(body[names[0]], names[0]), _side(body[names[1]], names[1]), names


async def _score(request: Request, body: dict[str, Any]) -> Any:
    asked, left, right, names = _parse(body)
    groups = _pairs(left, right, names)
    count = sum(len(indices) for _, indices, _ in groups)
    limit = service(request).settings.max_inputs
    if count > limit:
        raise InvalidInput(f"{count} pairs to score; at most {limit} per request (--max-inputs)", param=names[1])
    raw = asked.raw_scores or asked.use_activation is False
    try:
        results = await asyncio.gather(*(
            relevance(service(request), asked.model, query, documents, raw=raw) for query, _, documents in groups
        ))
    except InvalidInput as exc:
        raise relabel(exc, names[1]) from None
    scores = np.empty(count, dtype=np.float32)
    for (_, indices, _), result in zip(groups, results, strict=True):
        scores[indices] = result.scores
    tokens = sum(result.prompt_tokens for result in results)
    return OrjsonResponse({
        "id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
        "model": asked.model or results[0].model.id,
        "data": [{"index": i, "object": "score", "score": float(s)} for i, s in enumerate(scores.tolist())],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


def _declared() -> dict:
    return declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE, Task.MULTIVECTOR, Task.EMBED))


@router.post("/score", summary="Score text pairs (vLLM shape)", **_declared())
async def score(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    return await _score(request, body)


@router.post("/v1/score", summary="Score text pairs (vLLM shape; vLLM's older path)", **_declared())
async def score_v1(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    return await _score(request, body)

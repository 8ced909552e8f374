"""POST /rerank in the shapes its clients send, told apart by the body's keys.

- Text Embeddings Inference: `{"query", "texts", "raw_scores", "return_text", "truncate",
  "truncation_direction"}` -> `[{"index", "score", "text"?}]`, best first.
- Infinity: `{"query", "documents", "top_n", "return_documents", "raw_scores", "model"}` ->
  `{"object": "rerank", "results": [{"index", "relevance_score", "document"?}], "model", "usage",
  "id", "created"}`, best first, `document` a plain string.

Scores come from a cross-encoder (a model with the `score` task): each (query, document) pair is
one input of the engine's batches, shared with every other request's. A model that can't score
is answered 400 naming its tasks. A body with neither `texts` nor `documents` is a 422 that says
which keys each shape takes.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr, field_validator

from embedserve.api.compat import Text, relabel, service, validate_body
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, Scope, declare
from embedserve.errors import BadRequest, InvalidInput
from embedserve.models.tasks import Task

router = APIRouter(tags=["Rerank"])

SHAPES = "Text Embeddings Inference's takes 'query' and 'texts'; Infinity's takes 'query' and 'documents'"
_EXAMPLES = {
    "tei": {"summary": "Text Embeddings Inference", "value": {"query": "What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."]}},
    "infinity": {"summary": "Infinity", "value": {"query": "Where is Munich?", "documents": ["Munich is in Germany.", "The sky is blue."], "top_n": 1, "return_documents": True}},
}


class TeiRerank(BaseModel):
    query: Text
    texts: list[Text] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    model: StrictStr | None = None  # an embedserve extension: which loaded model scores

    @field_validator("truncation_direction")
    @classmethod
    def _right_only(cls, value: str) -> str:
        if value.lower() != "right":
            raise ValueError("only 'Right' truncation is served here")
        return value


class InfinityRerank(BaseModel):
    query: Text
    documents: list[Text] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, gt=0)
    return_documents: StrictBool = False
    raw_scores: StrictBool = False
    model: StrictStr | None = None


async def _scores(request: Request, body, documents: list[str], field: str) -> tuple[Any, np.ndarray]:
    try:
        result = await service(request).score(
            body.model, body.query, documents, raw=body.raw_scores, truncate=getattr(body, "truncate", None)
        )
    except InvalidInput as exc:
        raise relabel(exc, field) from None
    if result.scores.shape[1] != 1:
        raise BadRequest(
            f"model '{result.model.id}' scores {result.scores.shape[1]} labels; reranking needs a one-score cross-encoder",
            param="model",
        )
    return result, result.scores[:, 0]


@router.post(
    "/rerank",
    summary="Rerank documents for a query (Text Embeddings Inference or Infinity shape)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE,)),
)
async def rerank(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    if "texts" in body and "documents" not in body:
        tei = validate_body(TeiRerank, body)
        _, scores = await _scores(request, tei, tei.texts, "texts")
        order = np.argsort(-scores, kind="stable")
        ranks = [{"index": int(i), "score": float(scores[i])} for i in order]
        if tei.return_text:
            for rank in ranks:
                rank["text"] = tei.texts[rank["index"]]
        return OrjsonResponse(ranks)
    if "documents" in body and "texts" not in body:
        inf = validate_body(InfinityRerank, body)
        if inf.top_n is not None and inf.top_n > len(inf.documents):
            raise InvalidInput(f"top_n is {inf.top_n}, more than the {len(inf.documents)} documents", param="top_n")
        result, scores = await _scores(request, inf, inf.documents, "documents")
        order = np.argsort(-scores, kind="stable")[: inf.top_n]
        results = [{"index": int(i), "relevance_score": float(scores[i])} for i in order]
        if inf.return_documents:
            for item in results:
                item["document"] = inf.documents[item["index"]]
        tokens = result.prompt_tokens
        return OrjsonResponse({
            "object": "rerank", "results": results, "model": inf.model or result.model.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "id": f"rerank-{uuid.uuid4().hex}", "created": int(time.time()),
        })
    raise InvalidInput(f"a rerank body is one of two shapes: {SHAPES}", param=None)

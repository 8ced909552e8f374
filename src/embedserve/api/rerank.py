"""POST /rerank in the shapes its clients send, told apart by the body's keys.

- The Embedding Service: `{"query", "candidates", "batch_size"}` -> `{"scores": [...]}` in the
  candidates' order (`batch_size` is accepted and ignored: the engine batches).
- Text Embeddings Inference: `{"query", "texts", "raw_scores", "return_text", "truncate",
  "truncation_direction"}` -> `[{"index", "score", "text"?}]`, best first.
- Infinity: `{"query", "documents", "top_n", "return_documents", "raw_scores", "model"}` ->
  `{"object": "rerank", "results": [{"index", "relevance_score", "document"?}], "model", "usage",
  "id", "created"}`, best first, `document` a plain string.

Any model that can score answers (engine/ranking.py): a cross-encoder by its scores, a ColBERT or
BGE-M3 model by MaxSim, a dense embedder by cosine; one that can't is answered 400 naming its
tasks. A body that is none of the shapes is a 422 that says which keys each shape takes.

Errors have OpenAI's shape, except once the body is known to be TEI's (`texts`): from then on a
TEI client gets TEI's `{"error", "error_type"}`, as from TEI's own /rerank. (A body that is not
even a JSON object can't say whose it is: OpenAI's.)
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from embedserve.api.compat import Text, TruncationDirection, relabel, service, validate_body
from embedserve.api.errors import use_tei_errors
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, ErrorShape, Scope, declare
from embedserve.engine.ranking import Relevance, relevance
from embedserve.errors import InvalidInput
from embedserve.models.tasks import Task

router = APIRouter(tags=["Rerank"])

SHAPES = (
    "the Embedding Service's takes 'query' and 'candidates'; Text Embeddings Inference's 'query' and 'texts'; "
    "Infinity's 'query' and 'documents'"
)
_EXAMPLES = {
    "embedding-service": {"summary": "Embedding Service", "value": {"query": "What is hybrid search?", "candidates": ["Hybrid search combines dense and sparse vectors.", "Unrelated text about cooking."]}},
    "tei": {"summary": "Text Embeddings Inference", "value": {"query": "What is Deep Learning?", "texts": ["Deep Learning is not...", "Deep learning is..."]}},
    "infinity": {"summary": "Infinity", "value": {"query": "Where is Munich?", "documents": ["Munich is in Germany.", "The sky is blue."], "top_n": 1, "return_documents": True}},
}


class TeiRerank(BaseModel):
    query: Text
    texts: list[Text] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "Right"
    model: StrictStr | None = None  # an embedserve extension: which loaded model scores


class CandidatesRerank(BaseModel):
    query: Text
    candidates: list[Text] = Field(min_length=1)
    batch_size: StrictInt | None = Field(None, gt=0, description="Accepted and ignored: the engine batches.")
    model: StrictStr | None = None
    raw_scores: StrictBool = False


class InfinityRerank(BaseModel):
    query: Text
    documents: list[Text] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, gt=0)
    return_documents: StrictBool = False
    raw_scores: StrictBool = False
    model: StrictStr | None = None


async def _scores(request: Request, body, documents: list[str], field: str) -> tuple[Relevance, np.ndarray]:
    try:
        result = await relevance(
            service(request), body.model, body.query, documents, raw=body.raw_scores, truncate=getattr(body, "truncate", None)
        )
    except InvalidInput as exc:
        raise relabel(exc, field) from None
    return result, result.scores


@router.post(
    "/rerank",
    summary="Rerank documents for a query (Embedding Service, Text Embeddings Inference or Infinity shape)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE, Task.MULTIVECTOR, Task.EMBED), errors=ErrorShape.EITHER),
)
async def rerank(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    shapes = [key for key in ("candidates", "texts", "documents") if key in body]
    if shapes == ["candidates"]:
        asked = validate_body(CandidatesRerank, body)
        _, scores = await _scores(request, asked, asked.candidates, "candidates")
        return OrjsonResponse({"scores": scores})
    if shapes == ["texts"]:
        use_tei_errors(request)
        return OrjsonResponse(await tei_ranks(request, body))
    if shapes == ["documents"]:
        inf = validate_body(InfinityRerank, body)
        _check_top_n(inf.top_n, len(inf.documents))
        result, scores = await _scores(request, inf, inf.documents, "documents")
        results = [{"index": int(i), "relevance_score": float(scores[i])} for i in _best(scores, inf.top_n)]
        if inf.return_documents:
            for item in results:
                item["document"] = inf.documents[item["index"]]
        tokens = result.prompt_tokens
        return OrjsonResponse({
            "object": "rerank", "results": results, "model": inf.model or result.model.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "id": f"rerank-{uuid.uuid4().hex}", "created": int(time.time()),
        })
    raise InvalidInput(f"a rerank body is one of three shapes: {SHAPES}", param=None)


async def tei_ranks(request: Request, body: dict[str, Any]) -> list[dict[str, Any]]:
    """TEI's rerank (also what TEI's POST / answers for a reranker, api/tei_root.py)."""
    tei = validate_body(TeiRerank, body)
    _, scores = await _scores(request, tei, tei.texts, "texts")
    ranks = [{"index": int(i), "score": float(scores[i])} for i in _best(scores, None)]
    if tei.return_text:
        for rank in ranks:
            rank["text"] = tei.texts[rank["index"]]
    return ranks


class TextDocument(BaseModel):
    text: Text


class JinaRerank(BaseModel):
    query: Text
    documents: list[Text | TextDocument] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, gt=0)
    return_documents: StrictBool = Field(True, description="Jina's default; Cohere v1 clients that want none send false.")
    model: StrictStr | None = None
    raw_scores: StrictBool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class CohereV2Rerank(BaseModel):
    query: Text
    documents: list[Text] = Field(min_length=1)
    top_n: StrictInt | None = Field(None, gt=0)
    max_tokens_per_doc: StrictInt | None = Field(
        None, gt=0, description="Accepted; documents are cut where the model's maximum length cuts them."
    )
    priority: StrictInt | None = Field(None, description="Accepted and ignored.")
    model: StrictStr | None = None
    raw_scores: StrictBool = False


def _check_top_n(top_n: int | None, count: int) -> None:
    """Refused before any work: more results asked than there are documents."""
    if top_n is not None and top_n > count:
        raise InvalidInput(f"top_n is {top_n}, more than the {count} documents", param="top_n")


def _best(scores: np.ndarray, top_n: int | None) -> np.ndarray:
    """Document indices, highest score first (ties in input order), at most `top_n`."""
    return np.argsort(-scores, kind="stable")[:top_n]


@router.post(
    "/v1/rerank",
    summary="Rerank documents for a query (Jina and Cohere v1 shape)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE, Task.MULTIVECTOR, Task.EMBED)),
)
async def rerank_v1(body: JinaRerank, request: Request) -> Any:
    texts = body.texts()
    _check_top_n(body.top_n, len(texts))
    result, scores = await _scores(request, body, texts, "documents")
    results = [{"index": int(i), "relevance_score": float(scores[i])} for i in _best(scores, body.top_n)]
    if body.return_documents:
        for item in results:
            item["document"] = {"text": texts[item["index"]]}
    tokens = result.prompt_tokens
    return OrjsonResponse({
        "id": str(uuid.uuid4()), "model": body.model or result.model.id, "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


@router.post(
    "/v2/rerank",
    summary="Rerank documents for a query (Cohere v2 shape)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE, Task.MULTIVECTOR, Task.EMBED)),
)
async def rerank_v2(body: CohereV2Rerank, request: Request) -> Any:
    _check_top_n(body.top_n, len(body.documents))
    _, scores = await _scores(request, body, body.documents, "documents")
    results = [{"index": int(i), "relevance_score": float(scores[i])} for i in _best(scores, body.top_n)]
    meta = {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}
    return OrjsonResponse({"id": str(uuid.uuid4()), "results": results, "meta": meta})

"""Drop-in for the Embedding Service's BGE-M3 routes: POST /vectorize-hybrid and /vectorize-batch-hybrid.

That service (artryazanov/embedding-service before its 6ba18c6 refactor) answered from
FlagEmbedding's `BGEM3FlagModel.encode(..., return_dense=True, return_sparse=True,
return_colbert_vecs=return_colbert)`: `dense` the normalised CLS vector, `sparse` FlagEmbedding's
lexical weights as they come, keyed by the token id as a string (`{"6": 0.08, "83": 0.13}`; its
README's `{"hello": 0.5}` is illustrative), and `colbert` the per-token vectors or null. No
prefix is applied. A model without these outputs is answered 400 naming its tasks (that service
said "available only for BGE-M3 models"); here any model with dense + sparse (+ multi-vector
when asked) answers, all from one forward pass.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool

from embedserve.api.compat import Text, encode_texts
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import SERVED, Scope, declare
from embedserve.engine.service import EncodeResult
from embedserve.models.tasks import Task

router = APIRouter(tags=["Embedding Service (E5/BGE-M3)"])

HYBRID = frozenset({Task.EMBED, Task.SPARSE})
WITH_COLBERT = HYBRID | {Task.MULTIVECTOR}
_COLBERT = "Also return the ColBERT vectors (one per token after CLS); null when false."


class HybridTextRequest(BaseModel):
    text: Text = Field(description="The text to encode.")
    return_colbert: StrictBool = Field(False, description=_COLBERT)


class HybridBatchTextRequest(BaseModel):
    items: list[Text] = Field(min_length=1, description="The texts to encode.")
    return_colbert: StrictBool = Field(False, description=_COLBERT)


class HybridVector(BaseModel):
    dense: list[float]
    sparse: dict[str, float] = Field(description="Term weights keyed by token id (as a string), as FlagEmbedding gives them.")
    colbert: list[list[float]] | None = None


class HybridVectorResponse(BaseModel):
    hybrid_vector: HybridVector


class BatchHybridVectorResponse(BaseModel):
    hybrid_vectors: list[HybridVector]


def hybrid_vectors(result: EncodeResult) -> list[dict[str, Any]]:
    colbert = result.multivector
    return [
        {
            "dense": result.dense[i],
            "sparse": dict(zip(map(str, terms.indices.tolist()), terms.values.tolist(), strict=True)),
            "colbert": colbert[i] if colbert is not None else None,
        }
        for i, terms in enumerate(result.sparse)
    ]


def _tasks(return_colbert: bool) -> frozenset[Task]:
    return WITH_COLBERT if return_colbert else HYBRID


@router.post(
    "/vectorize-hybrid",
    response_model=HybridVectorResponse,
    summary="Dense, sparse and (optionally) ColBERT vectors of one text on the default model",
    **declare(Scope.EMBED, *SERVED, body=True, tasks=tuple(WITH_COLBERT)),
)
async def vectorize_hybrid(body: HybridTextRequest, request: Request) -> Any:
    result = await encode_texts(request, [body.text], _tasks(body.return_colbert), field="text", keys=["text"])
    return OrjsonResponse({"hybrid_vector": hybrid_vectors(result)[0]})


@router.post(
    "/vectorize-batch-hybrid",
    response_model=BatchHybridVectorResponse,
    summary="Dense, sparse and (optionally) ColBERT vectors of several texts on the default model",
    **declare(Scope.EMBED, *SERVED, body=True, tasks=tuple(WITH_COLBERT)),
)
async def vectorize_batch_hybrid(body: HybridBatchTextRequest, request: Request) -> Any:
    result = await encode_texts(request, body.items, _tasks(body.return_colbert), field="items")
    return OrjsonResponse({"hybrid_vectors": hybrid_vectors(result)})

"""Drop-in for the E5 / BGE-M3 "Embedding Service": POST /vectorize and POST /vectorize-batch.

That service prepends E5's `query: ` / `passage: ` itself according to `is_query`. Here the
flag maps to `input_type` (`query` / `document`), and the model's own prompts or its family
(models/families.py) supply the prefix, so the same request is right for E5, BGE-M3 (which
uses no prefix) or any other model served as the default.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool

from embedserve.api.compat import Text, embed_texts
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, SERVED, Scope, declare
from embedserve.models.families import InputType

router = APIRouter(tags=["Embedding Service (E5/BGE-M3)"])

_IS_QUERY = "true: embed as a search query (query prefix); false: as a document/passage (document prefix)."


class VectorizeRequest(BaseModel):
    text: Text = Field(description="The text to embed.")
    is_query: StrictBool = Field(False, description=_IS_QUERY)


class VectorizeBatchRequest(BaseModel):
    items: list[Text] = Field(min_length=1, description="The texts to embed.")
    is_query: StrictBool = Field(False, description=_IS_QUERY)


class VectorResponse(BaseModel):
    vector: list[float]


class VectorsResponse(BaseModel):
    vectors: list[list[float]]


def input_type(is_query: bool) -> InputType:
    return "query" if is_query else "document"


@router.post(
    "/vectorize",
    response_model=VectorResponse,
    summary="Embed one text on the default model",
    **declare(Scope.EMBED, *SERVED, body=True, tasks=DENSE_TASK),
)
async def vectorize(body: VectorizeRequest, request: Request) -> Any:
    result = await embed_texts(
        request, [body.text], field="text", keys=["text"], input_type=input_type(body.is_query)
    )
    return OrjsonResponse({"vector": result.vectors[0]})


@router.post(
    "/vectorize-batch",
    response_model=VectorsResponse,
    summary="Embed several texts on the default model",
    **declare(Scope.EMBED, *SERVED, body=True, tasks=DENSE_TASK),
)
async def vectorize_batch(body: VectorizeBatchRequest, request: Request) -> Any:
    result = await embed_texts(request, body.items, field="items", input_type=input_type(body.is_query))
    return OrjsonResponse({"vectors": result.vectors})

"""Drop-in for the E5 / BGE-M3 "Embedding Service": POST /vectorize and POST /vectorize-batch.

That service prepends E5's `query: ` / `passage: ` itself according to `is_query`. Here the
flag maps to `input_type` (`query` / `document`), and the model's own prompts or its family
(models/families.py) supply the prefix, so the same request is right for E5, BGE-M3 (which
uses no prefix) or any other model served as the default.

`/vectorize-batch` takes the three `items` formats of its current version (artryazanov/
embedding-service `main.py` at eb103dc): a list of texts (-> a list of vectors), a map
`{"id": "text"}` (-> `{"id": vector}`), or a list of `{"id", "text"}` objects (-> a list of
`{"id", "vector"}`); an empty `items` answers `{"vectors": []}` as it does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, Field, StrictBool, field_validator

from embedserve.api.compat import Text, embed_texts, validate_body
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, SERVED, ErrorShape, Scope, declare
from embedserve.models.families import InputType

router = APIRouter(tags=["Embedding Service (E5/BGE-M3)"])

_IS_QUERY = "true: embed as a search query (query prefix); false: as a document/passage (document prefix)."
_BATCH_EXAMPLES = {
    "texts": {"summary": "a list of texts (answers a list of vectors)", "value": {"items": ["First document.", "Second."]}},
    "map": {
        "summary": "id -> text (answers id -> vector)",
        "value": {"items": {"prod_1": "First document segment.", "prod_2": "Second document segment."}},
    },
    "objects": {
        "summary": "objects with id and text (answers objects with id and vector)",
        "value": {"items": [{"id": 1, "text": "First document."}, {"id": "b", "text": "Second."}]},
    },
}


class VectorizeRequest(BaseModel):
    text: Text = Field(description="The text to embed.")
    is_query: StrictBool = Field(False, description=_IS_QUERY)


class VectorizeItem(BaseModel):
    id: str | int
    text: Text

    @field_validator("id", mode="before")
    @classmethod
    def _string_or_integer(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("must be a string or an integer")
        return value


class _Texts(BaseModel):
    items: list[Text]


class _Map(BaseModel):
    items: dict[str, Text]


class _Objects(BaseModel):
    items: list[VectorizeItem]


class VectorResponse(BaseModel):
    vector: list[float]


class ItemVector(BaseModel):
    id: str | int
    vector: list[float]


class VectorsResponse(BaseModel):
    vectors: list[list[float]] | dict[str, list[float]] | list[ItemVector]


def input_type(is_query: bool) -> InputType:
    return "query" if is_query else "document"


@router.post(
    "/vectorize",
    response_model=VectorResponse,
    summary="Embed one text on the default model",
    **declare(Scope.EMBED, *SERVED, body=True, tasks=DENSE_TASK, errors=ErrorShape.DROP_IN),
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
    **declare(Scope.EMBED, *SERVED, body=True, tasks=DENSE_TASK, errors=ErrorShape.DROP_IN),
)
async def vectorize_batch(
    request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_BATCH_EXAMPLES)]
) -> Any:
    """The body is read as a map first, then as the format its `items` have, so a bad item is
    named in that format's terms (`items[1]`, `items.id2`, `items[0].text`)."""
    is_query = validate_body(_IsQuery, {"is_query": body.get("is_query", False)}).is_query
    items = body.get("items")
    kind = input_type(is_query)
    if isinstance(items, dict):
        texts = validate_body(_Map, {"items": items}).items
        ids = list(texts)
        if not ids:
            return OrjsonResponse({"vectors": {}})
        result = await embed_texts(request, list(texts.values()), field="items", keys=ids, input_type=kind)
        return OrjsonResponse({"vectors": dict(zip(ids, result.vectors, strict=True))})
    if isinstance(items, list) and items and isinstance(items[0], dict):
        objects = validate_body(_Objects, {"items": items}).items
        result = await embed_texts(request, [o.text for o in objects], field="items", input_type=kind)
        return OrjsonResponse({"vectors": [{"id": o.id, "vector": v} for o, v in zip(objects, result.vectors, strict=True)]})
    if "items" not in body:
        validate_body(_Texts, body)  # 'items' is required
    texts = validate_body(_Texts, {"items": items}).items
    if not texts:
        return OrjsonResponse({"vectors": []})
    result = await embed_texts(request, texts, field="items", input_type=kind)
    return OrjsonResponse({"vectors": result.vectors})


class _IsQuery(BaseModel):
    is_query: StrictBool = False

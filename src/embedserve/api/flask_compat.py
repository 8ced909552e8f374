"""Drop-in for the Flask "Sentence Transformer API": POST /embedding (its GET /health is ops.py's).

One route, two body shapes, both on the default model:

* a map of id -> text, `{"id1": "first", "id2": "second"}`, answered with the same ids, each
  vector written as a JSON-array *string* (`"[-0.0108, 0.0234, ...]"`), which is what that server
  returns (`json.dumps` of the vector's float list: ", " separators, full precision);
* KServe V1, `{"instances": ["first", "second"]}`, answered `{"predictions": [[...], [...]]}`
  with real float arrays.

A body is KServe when it has an `instances` key whose value is not a string (a string value
is just a map entry whose id happens to be "instances"). The shape has to be known before
validating, so the route takes the raw JSON object and validates it with one of the two
models below; errors still come out as the usual 422 naming the key, except the two the Flask
server answered 400 itself: an empty map and `{"instances": []}`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator

from embedserve.api.compat import Text, embed_texts, validate_body
from embedserve.api.responses import OrjsonResponse, renderable
from embedserve.api.routing import DENSE_TASK, SERVED, ErrorShape, Scope, declare
from embedserve.errors import BadRequest

router = APIRouter(tags=["Flask Sentence Transformer API"])

_EXAMPLES = {
    "map": {
        "summary": "id -> text (answers id -> vector as a JSON-array string)",
        "value": {"id1": "This is the first sentence.", "id2": "Here is another sentence."},
    },
    "kserve": {
        "summary": "KServe V1 instances (answers predictions)",
        "value": {"instances": ["This is the first sentence.", "Here is another sentence."]},
    },
}


class TextMap(RootModel[dict[str, Text]]):
    """`{"id": "text", ...}`: at least one entry, every value a non-empty string."""

    @field_validator("root")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError('must map at least one id to a text, e.g. {"id1": "This is the first sentence."}')
        for key in value:
            if renderable(key) != key:  # an unpaired surrogate: JSON allows it, the answer could not hold it
                raise ValueError(f"the id '{renderable(key)}' is not valid Unicode text (it has an unpaired surrogate)")
        return value


class KServeRequest(BaseModel):
    """KServe V1 predict body. Other keys are refused: mixing ids in would be ambiguous."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Text] = Field(min_length=1, description="Texts to embed.")


class KServeResponse(BaseModel):
    predictions: list[list[float]]


# A map's answer (id -> the vector as a JSON-array string), or KServe's.
EmbeddingAnswer = dict[str, str] | KServeResponse


def is_kserve(body: dict[str, Any]) -> bool:
    return "instances" in body and not isinstance(body["instances"], str)


def vector_string(row) -> str:
    """`"[-0.0108..., 0.0234...]"`: what `json.dumps(embedding.tolist())` gives in Python."""
    return json.dumps(row.tolist())


@router.post(
    "/embedding",
    response_model=EmbeddingAnswer,
    summary="Embed a map of id -> text, or KServe V1 instances, on the default model",
    response_description='`{"id1": "[...]", ...}` for a map; `{"predictions": [[...], ...]}` for instances.',
    **declare(Scope.EMBED, 400, *SERVED, body=True, tasks=DENSE_TASK, errors=ErrorShape.DROP_IN),
)
async def embedding(
    request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]
) -> Any:
    # The Flask server's own 400s ("No JSON data provided", "No sentences provided"): nothing to embed.
    if not body:
        raise BadRequest('no JSON data provided: map at least one id to a text, e.g. {"id1": "This is the first sentence."}')
    if body.get("instances") == []:
        raise BadRequest("no sentences provided: 'instances' holds no text", param="instances")
    if is_kserve(body):
        instances = validate_body(KServeRequest, body).instances
        result = await embed_texts(request, instances, field="instances")
        return OrjsonResponse({"predictions": result.vectors})
    texts = validate_body(TextMap, body).root
    ids = list(texts)
    result = await embed_texts(request, list(texts.values()), field="the request body", keys=ids)
    return OrjsonResponse({key: vector_string(row) for key, row in zip(ids, result.vectors, strict=True)})

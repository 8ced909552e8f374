"""Drop-in for "Sentence embeddings over HTTP": GET (and POST) /v1/encode.

That server takes its JSON body on a GET, `{"model": "all-MiniLM-L6-v2", "input": [...]}`, so
the route reads a body whatever the method (FastAPI parses a declared body on GET too; POST
is offered for clients and proxies that drop GET bodies).

It serves only the models it has loaded (those listed by GET /v1/models), so unlike the other
routes this one does not load on demand: a model that is not loaded is a 400, as that server
answered ("Model '...' does not exist"); one unloaded or still loading is the usual 503.
`input` is a list of texts or one text.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictStr, field_validator

from embedserve.api.compat import Text, embed_texts, service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, SERVED, ErrorShape, Scope, declare
from embedserve.errors import BadRequest, ModelNotFound

router = APIRouter(tags=["Sentence embeddings over HTTP"])


class EncodeRequest(BaseModel):
    model: StrictStr | None = Field(
        None, min_length=1, description="A loaded model (id or alias, see GET /v1/models); the default when omitted."
    )
    input: list[Text] = Field(min_length=1, description="Texts to embed, or one text.")

    @field_validator("input", mode="before")
    @classmethod
    def _one_text(cls, value: object) -> object:
        """That server took `str | list[str]`: one text is a list of one (errors still name input[i])."""
        return [value] if isinstance(value, str) else value


class EncodedItem(BaseModel):
    dims: int
    embedding: list[float]
    index: int
    object: Literal["embedding"] = "embedding"


class EncodeResponse(BaseModel):
    data: list[EncodedItem]
    model: str
    object: Literal["list"] = "list"


_SUMMARY = "Embed texts with a loaded model"


_DECLARED = declare(Scope.EMBED, 400, *SERVED, body=True, tasks=DENSE_TASK, errors=ErrorShape.DROP_IN)


@router.get(
    "/v1/encode",
    response_model=EncodeResponse,
    summary=f"{_SUMMARY} (JSON body on GET)",
    operation_id="encode_get",
    **_DECLARED,
)
@router.post("/v1/encode", response_model=EncodeResponse, summary=_SUMMARY, operation_id="encode_post", **_DECLARED)
async def encode(body: EncodeRequest, request: Request) -> Any:
    try:
        model = service(request).pool.get(body.model)  # no loading on demand here
    except ModelNotFound as exc:
        raise BadRequest(exc.message, param="model", code=exc.code) from None
    result = await embed_texts(request, body.input, field="input", model=model.id)
    dims = int(result.vectors.shape[1])
    data = [
        {"dims": dims, "embedding": row, "index": i, "object": "embedding"} for i, row in enumerate(result.vectors)
    ]
    return OrjsonResponse({"data": data, "model": body.model or result.model, "object": "list"})

"""Text Embeddings Inference's sparse and per-token routes: POST /embed_sparse and POST /embed_all.

Request fields as TEI's `EmbedSparseRequest` / `EmbedAllRequest`: `inputs` (a string or a list of
strings), `truncate` (absent: the server's --truncate), `truncation_direction` and `prompt_name`
(a key of the model's own prompts). Answers as TEI's: `/embed_sparse` gives per input its
non-zero terms `[{"index": id, "value": w}, ...]`; `/embed_all` per input one vector per token.

Where TEI's `/embed_all` returns the encoder's raw token states, ours returns the model's
multi-vector output (BGE-M3's ColBERT vectors, a ColBERT model's projected vectors): the per-token
vectors a retrieval system indexes. A model without that output is answered 400 naming its tasks.
Only right-side truncation is served; `Left` is refused with a 422 rather than silently cut the
other end.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictStr

from embedserve.api.compat import Text, TruncationDirection, encode_texts
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, Scope, declare
from embedserve.models.tasks import Task

router = APIRouter(tags=["Text Embeddings Inference"])

SPARSE = frozenset({Task.SPARSE})
MULTIVECTOR = frozenset({Task.MULTIVECTOR})


class TeiRequest(BaseModel):
    inputs: Text | list[Text] = Field(description="A text, or a list of texts.")
    truncate: StrictBool | None = Field(None, description="Cut inputs longer than the model takes; absent: --truncate.")
    truncation_direction: TruncationDirection = Field("Right", description="Which end to cut. Only `Right` is served.")
    prompt_name: StrictStr | None = Field(None, description="A prompt of the model's own `prompts`, put before each input.")
    model: str | None = Field(None, description="Model id or alias (an embedserve extension); the default model when omitted.")

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


class SparseValue(BaseModel):
    index: int
    value: float


async def _encode(body: TeiRequest, request: Request, tasks: frozenset[Task]):
    return await encode_texts(
        request, body.texts(), tasks, field="inputs", model=body.model, truncate=body.truncate,
        prompt_name=body.prompt_name,
    )


@router.post(
    "/embed_sparse",
    response_model=list[list[SparseValue]],
    summary="Sparse term weights of each input (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(SPARSE)),
)
async def embed_sparse(body: TeiRequest, request: Request) -> Any:
    result = await _encode(body, request, SPARSE)
    return OrjsonResponse([
        [{"index": i, "value": w} for i, w in zip(terms.indices.tolist(), terms.values.tolist(), strict=True)]
        for terms in result.sparse
    ])


@router.post(
    "/embed_all",
    response_model=list[list[list[float]]],
    summary="One vector per token of each input (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(MULTIVECTOR)),
)
async def embed_all(body: TeiRequest, request: Request) -> Any:
    result = await _encode(body, request, MULTIVECTOR)
    return OrjsonResponse(result.multivector)

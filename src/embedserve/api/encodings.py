"""POST /v1/encodings: any combination of dense, sparse and multi-vector outputs, for any model that has them.

All asked outputs come from one forward pass. The request names the outputs it wants
(`outputs`, default: every output the model has); a model lacking one is answered 400 naming
its tasks. Sparse outputs come as `{indices, values}` (ids ascending, as Qdrant and other vector
databases take them), optionally with each term's text and cut to the top-k or a minimum
weight; dense and multi-vector outputs as float arrays or, with `encoding_format: base64`,
little-endian float32 (a multi-vector as one [tokens, dim] row-major block plus its shape).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, model_validator

from embedserve.api.compat import Text, encode_texts
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, Scope, declare
from embedserve.backends.base import SparseVector
from embedserve.engine.service import EncodeResult, SparseOptions
from embedserve.errors import WrongTask
from embedserve.models.families import InputType
from embedserve.models.tasks import OUTPUTS, Task

router = APIRouter(tags=["embedserve"])

Output = Literal["dense", "sparse", "multivector"]
_TASK = {"dense": Task.EMBED, "sparse": Task.SPARSE, "multivector": Task.MULTIVECTOR}


class SparseRequestOptions(BaseModel):
    top_k: StrictInt | None = Field(None, ge=1, description="Keep only the k heaviest terms of each input.")
    min_weight: StrictFloat | None = Field(None, ge=0, description="Drop terms weighing less than this.")
    return_tokens: StrictBool = Field(False, description="Add each term's text (`tokens`), for people to read.")


class EncodingsRequest(BaseModel):
    input: Text | list[Text] = Field(description="A text, or a list of texts.")
    model: str | None = Field(None, description="Model id or alias; the first served model when omitted.")
    outputs: list[Output] | None = Field(
        None, min_length=1, description="Which outputs to return; omitted: every output the model has."
    )
    input_type: InputType | None = Field(None, description="`query` or `document`: the model's query or document prefix.")
    dimensions: StrictInt | None = Field(None, description="Cut dense vectors to this many dimensions and renormalise.")
    normalize: StrictBool | None = Field(None, description="L2-normalise dense vectors; omitted: the model's own choice.")
    truncate: StrictBool | None = Field(None, description="Cut inputs longer than the model takes; omitted: --truncate.")
    sparse: SparseRequestOptions = Field(default_factory=SparseRequestOptions)
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: dense and multi-vector outputs as little-endian float32."
    )

    @model_validator(mode="after")
    def _distinct_outputs(self):
        if self.outputs is not None and len(set(self.outputs)) != len(self.outputs):
            raise ValueError("'outputs' lists an output twice")
        return self

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input


class SparseObject(BaseModel):
    indices: list[int]
    values: list[float]
    tokens: list[str] | None = None


class MultivectorBase64(BaseModel):
    shape: list[int]
    data: str


class EncodingObject(BaseModel):
    object: Literal["encoding"] = "encoding"
    index: int
    dense: list[float] | str | None = None
    sparse: SparseObject | None = None
    multivector: list[list[float]] | MultivectorBase64 | None = None


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EncodingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EncodingObject]
    model: str
    usage: Usage


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _sparse(terms: SparseVector, texts: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"indices": terms.indices, "values": terms.values}
    if texts is not None:
        out["tokens"] = texts
    return out


def encodings_body(result: EncodeResult, body: EncodingsRequest) -> dict[str, Any]:
    base64_format = body.encoding_format == "base64"
    backend = result.model.worker.backend
    data = []
    for i in range(len(body.texts())):
        item: dict[str, Any] = {"object": "encoding", "index": i}
        if result.dense is not None:
            item["dense"] = _b64(result.dense[i]) if base64_format else result.dense[i]
        if result.sparse is not None:
            terms = result.sparse[i]
            texts = backend.token_texts(terms.indices.tolist()) if body.sparse.return_tokens else None
            item["sparse"] = _sparse(terms, texts)
        if result.multivector is not None:
            vectors = result.multivector[i]
            item["multivector"] = {"shape": list(vectors.shape), "data": _b64(vectors)} if base64_format else vectors
        data.append(item)
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": result.model.id, "usage": usage}


@router.post(
    "/v1/encodings",
    response_model=EncodingsResponse,
    summary="Dense, sparse and multi-vector outputs of any model that has them, from one forward pass",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=OUTPUTS),
)
async def encodings(body: EncodingsRequest, request: Request) -> Any:
    if body.outputs is not None:
        tasks = frozenset(_TASK[name] for name in body.outputs)
    else:
        model = await request.app.state.service.pool.get_or_load(body.model)
        tasks = frozenset(task for task in OUTPUTS if task in model.info.tasks)
        if not tasks:
            raise WrongTask(model.id, "dense, sparse or multi-vector embeddings", [t.value for t in model.info.tasks])
    sparse = SparseOptions(top_k=body.sparse.top_k, min_weight=body.sparse.min_weight)
    result = await encode_texts(
        request, body.texts(), tasks, field="input", model=body.model, input_type=body.input_type,
        dimensions=body.dimensions, normalize=body.normalize, truncate=body.truncate, sparse=sparse,
    )
    return OrjsonResponse(encodings_body(result, body))

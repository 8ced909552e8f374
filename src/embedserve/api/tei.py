"""Text Embeddings Inference's embedding routes: POST /embed, /embed_sparse, /embed_all, /similarity.

Request fields as TEI's `EmbedRequest` / `EmbedSparseRequest` / `EmbedAllRequest`: `inputs` (a
string or a list of strings; /embed also token ids), `truncate` (absent: the server's --truncate),
`truncation_direction` and `prompt_name` (a key of the model's own prompts); /embed adds
`normalize` (default true; false gives the raw pooled vectors, what Haystack asks for) and
`dimensions`. Answers as TEI's: `/embed` one vector per input (a single string too gets a list of
one); `/embed_sparse` per input its non-zero terms `[{"index": id, "value": w}, ...]`;
`/embed_all` per input one vector per token; `/similarity` the cosine of `source_sentence` with
each of `sentences` (the HF "sentence-similarity" task's shape, `parameters` for the options).
Errors have TEI's shape, `{"error", "error_type"}` (api/errors.py). The other TEI routes:
api/tei_predict.py (/predict), api/tei_tools.py (/tokenize, /decode, /info), api/tei_root.py (POST /).

Where TEI's `/embed_all` returns the encoder's raw token states, ours returns the model's
multi-vector output (BGE-M3's ColBERT vectors, a ColBERT model's projected vectors): the per-token
vectors a retrieval system indexes. A model without that output is answered 400 naming its tasks.
Only right-side truncation is served; `Left` is refused with a 422 rather than silently cut the
other end.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from embedserve.api.compat import Text, TruncationDirection, encode_texts, one_of
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, ErrorShape, Scope, declare
from embedserve.models.tasks import Task

router = APIRouter(tags=["Text Embeddings Inference"])

DENSE = frozenset({Task.EMBED})
SPARSE = frozenset({Task.SPARSE})
MULTIVECTOR = frozenset({Task.MULTIVECTOR})
TEI = ErrorShape.TEI
TokenId = Annotated[StrictInt, Field(ge=0)]
_EMBED_SHAPES = "a string, a list of strings, a list of token ids, or a list of token-id lists (not mixed)"


class TeiRequest(BaseModel):
    inputs: Text | list[Text] = Field(description="A text, or a list of texts.")
    truncate: StrictBool | None = Field(None, description="Cut inputs longer than the model takes; absent: --truncate.")
    truncation_direction: TruncationDirection = Field("Right", description="Which end to cut. Only `Right` is served.")
    prompt_name: StrictStr | None = Field(None, description="A prompt of the model's own `prompts`, put before each input.")
    model: str | None = Field(None, description="Model id or alias (an embedserve extension); the default model when omitted.")

    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs


class EmbedRequest(TeiRequest):
    inputs: Annotated[Text | list[Text] | list[TokenId] | list[list[TokenId]], one_of(_EMBED_SHAPES)] = Field(
        description=f"What to embed: {_EMBED_SHAPES}; ids are the model's own tokenizer's.",
        examples=[["What is Deep Learning?", "Hi"]],
    )
    normalize: StrictBool = Field(True, description="L2-normalise the vectors; false: the raw pooled vectors.")
    dimensions: StrictInt | None = Field(None, ge=1, description="Cut the vectors to this many dimensions (then renormalised).")


    @model_validator(mode="after")
    def _prompt_needs_text(self):
        items = self.items()
        if self.prompt_name is not None and items and not isinstance(items[0], str):
            raise ValueError("'prompt_name' applies to text input only; token ids are embedded as given")
        return self

    def items(self) -> list[str] | list[list[int]]:
        value = self.inputs
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]  # one text, or one input's token ids
        return value  # [] is refused by the service: "'inputs' must not be empty"


class SimilarityInputs(BaseModel):
    source_sentence: Text
    sentences: list[Text] = Field(min_length=1)


class SimilarityParameters(BaseModel):
    truncate: StrictBool | None = None
    truncation_direction: TruncationDirection = "Right"
    prompt_name: StrictStr | None = None


class SimilarityRequest(BaseModel):
    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = Field(None, description="Options (huggingface_hub sends `{}`).")
    model: StrictStr | None = Field(None, description="Model id or alias (an embedserve extension).")


_SIMILARITY_EXAMPLE = {"inputs": {"source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?", "Hi"]}}


class SparseValue(BaseModel):
    index: int
    value: float


async def _encode(body: TeiRequest, request: Request, tasks: frozenset[Task]):
    return await encode_texts(
        request, body.texts(), tasks, field="inputs", model=body.model, truncate=body.truncate,
        prompt_name=body.prompt_name,
    )


@router.post(
    "/embed",
    response_model=list[list[float]],
    summary="One vector per input (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(DENSE), errors=TEI),
)
async def embed(body: EmbedRequest, request: Request) -> Any:
    result = await encode_texts(
        request, body.items(), DENSE, field="inputs", model=body.model, truncate=body.truncate,
        prompt_name=body.prompt_name, normalize=body.normalize, dimensions=body.dimensions,
    )
    return OrjsonResponse(result.dense)


@router.post(
    "/similarity",
    response_model=list[float],
    summary="Cosine similarity of a sentence to each of several (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(DENSE), errors=TEI),
)
async def similarity(body: Annotated[SimilarityRequest, Body(examples=[_SIMILARITY_EXAMPLE])], request: Request) -> Any:
    """Embedded together (one request, so `sentences` plus the source count against --max-inputs),
    unnormalised as TEI embeds them, then the cosine of each sentence with the source, in float64
    (a text compared with itself gives exactly 1, not float32's 1.0000001)."""
    asked = body.inputs
    options = body.parameters or SimilarityParameters()
    keys = ["inputs.source_sentence", *(f"inputs.sentences[{i}]" for i in range(len(asked.sentences)))]
    result = await encode_texts(
        request, [asked.source_sentence, *asked.sentences], DENSE, field="inputs", keys=keys, model=body.model,
        truncate=options.truncate, prompt_name=options.prompt_name, normalize=False,
    )
    vectors = result.dense.astype(np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return OrjsonResponse(np.clip(vectors[1:] @ vectors[0], -1.0, 1.0).tolist())


@router.post(
    "/embed_sparse",
    response_model=list[list[SparseValue]],
    summary="Sparse term weights of each input (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(SPARSE), errors=TEI),
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
    **declare(Scope.EMBED, *LOADS, body=True, tasks=tuple(MULTIVECTOR), errors=TEI),
)
async def embed_all(body: TeiRequest, request: Request) -> Any:
    result = await _encode(body, request, MULTIVECTOR)
    return OrjsonResponse(result.multivector)

"""Cohere's embed API: POST /v2/embed and POST /v1/embed (cohere-python `ClientV2.embed` / `Client.embed`).

Shapes as cohere-python sends and parses them (reference: peer-apis.md 4.1):

- v2: `{"model", "input_type", "texts" | "inputs", "embedding_types", "output_dimension",
  "max_tokens", "truncate", "priority"}` -> `{"id", "embeddings": {type: [...]}, "texts", "meta",
  "response_type": "embeddings_by_type"}`, only the asked types under `embeddings`.
- v1: `{"texts", "model", "input_type", "embedding_types", "truncate"}` -> without
  `embedding_types` `{"response_type": "embeddings_floats", "embeddings": [[...]], ...}`, with it
  the by-type shape. The SDK tells the two apart by `response_type` (types/embed_response.py),
  and LangChain's `CohereEmbeddings` still builds the v1 client, so v1 must carry it.

What Cohere's fields mean here:

- `input_type` picks the model's prompt: `search_query` its query prefix and `search_document`
  its document prefix (as `/v1/embeddings`' `query` / `document`); `classification` and
  `clustering` the model's own sentence-transformers prompt of that name when it has one (as
  TEI's `prompt_name`), else what the model embeds without an input type (its default prompt,
  usually none): a model trained without such a prompt is best served by its plain encoding.
  `image` (and `images`, and image parts of `inputs`) are refused, 422: only text is served.
- `truncate`: `END` cuts the end of over-long texts, `NONE` refuses them (422 naming the text);
  `START` is refused (422), since the engine only ever cuts the end. Absent: the server's
  --truncate, which is on by default, i.e. Cohere's default `END`.
- `output_dimension`: the vectors are cut and renormalised (Matryoshka), as `dimensions` on
  `/v1/embeddings`: any value from 1 to the model's dimension (400 above), not only Cohere's
  256/512/1024/1536.
- `max_tokens` and `priority` are accepted and ignored: texts are cut at the model's maximum
  length, and the engine batches requests in arrival order.
- `embedding_types`: engine/quantization.py computes each (sentence-transformers'
  `quantize_embeddings` values; int8/uint8 on ranges calibrated once per loaded model).
- `model` may be omitted (the default model), as on every route here; Cohere's own model names
  (`embed-v4.0`) resolve to nothing and get 404.

At most 96 texts or inputs per request (Cohere's limit; 422 beyond), never an empty list or text.
Vectors are the model's normal output (normalised, as `/v1/embeddings` gives them).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import AfterValidator, BaseModel, Field, StrictInt, StrictStr, model_validator

from embedserve.api.compat import Text, encode_texts, service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, LOADS, Scope, declare
from embedserve.engine.quantization import (
    CALIBRATIONS,
    EmbeddingType,
    check_packable,
    needs_ranges,
    quantize,
)
from embedserve.engine.service import EncodeResult
from embedserve.errors import BadRequest
from embedserve.models.families import InputType as InputKind

router = APIRouter(tags=["Cohere"])

MAX_TEXTS = 96  # Cohere's limit per call, which its SDK batches by
TEXT_ONLY = "images are not served here: embedserve embeds text only"
DENSE = frozenset(DENSE_TASK)
_PREFIXES: dict[str, InputKind] = {"search_query": "query", "search_document": "document"}


def _text_only(value: str) -> str:
    if value == "image":
        raise ValueError("'image' is not served: embedserve embeds text only")
    return value


def _no_images(value: list | None) -> None:
    if value is not None:
        raise ValueError(TEXT_ONLY)
    return None


def _end_or_none(value: str) -> str:
    if value == "START":
        raise ValueError("only 'END' and 'NONE' truncation are served here: over-long texts are cut at the end")
    return value


CohereInputType = Annotated[
    Literal["search_document", "search_query", "classification", "clustering", "image"], AfterValidator(_text_only)
]
Truncate = Annotated[Literal["NONE", "START", "END"], AfterValidator(_end_or_none)]
def _at_most_96(value: list) -> list:
    if len(value) > MAX_TEXTS:
        raise ValueError(f"at most {MAX_TEXTS} per request (Cohere's limit), got {len(value)}: send them in several requests")
    return value


# The limit is checked by the validator (for its message) and shown in the schema as maxItems.
TextList = Annotated[list[Text], Field(min_length=1, json_schema_extra={"maxItems": MAX_TEXTS}), AfterValidator(_at_most_96)]


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: Text | None = None
    image_url: Any = None


class EmbedInput(BaseModel):
    """One of v2's `inputs`: served when it is a single text part."""

    content: list[ContentPart] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_text(self):
        if any(part.type == "image_url" for part in self.content):
            raise ValueError(TEXT_ONLY)
        if len(self.content) != 1:
            raise ValueError(f"one text part per input is served, this one has {len(self.content)}")
        if self.content[0].text is None:
            raise ValueError("a text part needs its 'text'")
        return self


class CohereEmbedBase(BaseModel):
    model: StrictStr | None = Field(None, description="Model id or alias; the default model when omitted.")
    texts: TextList | None = Field(None, description=f"Texts to embed: 1 to {MAX_TEXTS} non-empty strings.")
    images: Annotated[list[Any] | None, AfterValidator(_no_images)] = Field(None, description=f"Not served: {TEXT_ONLY}.")
    embedding_types: list[EmbeddingType] | None = Field(
        None, min_length=1,
        description="Any of float, int8, uint8, binary, ubinary, base64 (sentence-transformers' quantize_embeddings; "
        "int8/uint8 on per-dimension ranges calibrated once per model; binary types need a dimension divisible by 8).",
    )
    truncate: Truncate | None = Field(
        None, description="END cuts over-long texts at the end, NONE refuses them (422); START is not served. "
        "Absent: the server's --truncate (on by default, as END).",
    )

    def text_list(self) -> list[str]:
        return self.texts or []

    @model_validator(mode="after")
    def _has_texts(self):
        if self.texts is None and self.images is None and getattr(self, "inputs", None) is None:
            raise ValueError("'texts' is required: the texts to embed")
        return self


class CohereEmbedV1(CohereEmbedBase):
    input_type: CohereInputType | None = Field(
        None, description="search_query / search_document: the model's query / document prefix; classification / "
        "clustering: the model's prompt of that name if it has one. `image` is not served.",
    )


class CohereEmbedV2(CohereEmbedBase):
    input_type: CohereInputType = Field(
        description="search_query / search_document: the model's query / document prefix; classification / "
        "clustering: the model's prompt of that name if it has one. `image` is not served.",
    )
    inputs: Annotated[
        list[EmbedInput], Field(min_length=1, json_schema_extra={"maxItems": MAX_TEXTS}), AfterValidator(_at_most_96)
    ] | None = Field(
        None, description="Instead of `texts`: inputs of one text part each (`{\"content\": [{\"type\": \"text\", "
        "\"text\": ...}]}`).",
    )
    output_dimension: StrictInt | None = Field(None, ge=1, description="Cut vectors to this many dimensions and renormalise.")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Accepted; texts are cut at the model's maximum length.")
    priority: StrictInt | None = Field(None, description="Accepted and ignored.")

    @model_validator(mode="after")
    def _one_source(self):
        if self.texts is not None and self.inputs is not None:
            raise ValueError("send 'texts' or 'inputs', not both")
        return self

    def text_list(self) -> list[str]:
        if self.inputs is not None:
            return [item.content[0].text for item in self.inputs]
        return self.texts or []


class ApiVersion(BaseModel):
    version: str


class BilledUnits(BaseModel):
    input_tokens: int


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class EmbeddingsByType(BaseModel):
    float_: list[list[float]] | None = Field(None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class EmbedByTypeResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type"]
    embeddings: EmbeddingsByType
    texts: list[str]
    meta: Meta


class EmbedFloatsResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_floats"]
    embeddings: list[list[float]]
    texts: list[str]
    meta: Meta


async def _encode(request: Request, body: CohereEmbedBase, texts: list[str], dimensions: int | None) -> EncodeResult:
    """The dense vectors, with the prompt `input_type` maps to; errors name `texts[i]` / `inputs[i]`
    and `output_dimension`."""
    asked = body.input_type
    input_type: InputKind | None = _PREFIXES.get(asked) if asked else None
    prompt_name, name = None, body.model
    if asked in ("classification", "clustering"):
        model = await service(request).pool.get_or_load(body.model)  # its own prompts decide
        name = model.id
        prompt_name = asked if asked in model.info.prompts else None
    truncate = None if body.truncate is None else body.truncate == "END"
    field = "inputs" if getattr(body, "inputs", None) is not None else "texts"
    try:
        return await encode_texts(
            request, texts, DENSE, field=field, model=name, dimensions=dimensions, input_type=input_type,
            prompt_name=prompt_name, truncate=truncate,
        )
    except BadRequest as exc:
        if exc.param != "dimensions":
            raise
        raise BadRequest(exc.message.replace("dimensions", "output_dimension", 1), param="output_dimension") from None


async def _by_type(request: Request, result: EncodeResult, kinds: list[str], dimensions: int | None) -> dict[str, Any]:
    vectors = result.dense
    check_packable(kinds, vectors.shape[1])
    ranges = await CALIBRATIONS.ranges(service(request), result.model, dimensions) if needs_ranges(kinds) else None
    return {kind: quantize(vectors, kind, ranges) for kind in kinds}


def _meta(version: str, tokens: int) -> dict[str, Any]:
    return {"api_version": {"version": version}, "billed_units": {"input_tokens": tokens}}


_V2_EXAMPLES = {
    "query": {
        "summary": "Query vectors as float, int8 and ubinary",
        "value": {"model": "all-MiniLM-L6-v2", "input_type": "search_query", "texts": ["What is hybrid search?"],
                  "embedding_types": ["float", "int8", "ubinary"]},
    },
    "documents": {
        "summary": "Documents, cut to 128 dimensions",
        "value": {"model": "all-MiniLM-L6-v2", "input_type": "search_document",
                  "texts": ["Hybrid search combines dense and sparse vectors.", "The sky is blue."],
                  "output_dimension": 128, "truncate": "END"},
    },
    "inputs": {
        "summary": "Text inputs (content parts)",
        "value": {"input_type": "clustering", "inputs": [{"content": [{"type": "text", "text": "A cat sleeps."}]}]},
    },
}
_V1_EXAMPLES = {
    "floats": {
        "summary": "Float vectors (embeddings_floats)",
        "value": {"model": "all-MiniLM-L6-v2", "texts": ["hello", "goodbye"], "input_type": "search_document"},
    },
    "by-type": {
        "summary": "By type (embeddings_by_type)",
        "value": {"texts": ["hello"], "input_type": "search_query", "embedding_types": ["float", "int8"]},
    },
}
_LIMITS = (
    f"At most {MAX_TEXTS} texts per request (Cohere's limit; more: 422), each a non-empty string. "
    "`truncate`: END cuts, NONE refuses over-long texts (422), START is not served (422); absent: --truncate. "
    "int8/uint8 use per-dimension ranges calibrated once per loaded model on the server's calibration texts "
    "(as documents); binary/ubinary need a dimension divisible by 8 (else 400)."
)


@router.post(
    "/v2/embed",
    response_model=EmbedByTypeResponse,
    summary="Embed texts (Cohere v2)",
    description=f"Cohere's v2 embed: `input_type` is required; `output_dimension` cuts and renormalises. {_LIMITS}",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=DENSE_TASK),
)
async def embed_v2(request: Request, body: Annotated[CohereEmbedV2, Body(openapi_examples=_V2_EXAMPLES)]) -> Any:
    kinds = list(dict.fromkeys(body.embedding_types or ["float"]))
    if body.output_dimension is not None:
        check_packable(kinds, body.output_dimension, param="output_dimension")  # before any work
    texts = body.text_list()
    result = await _encode(request, body, texts, body.output_dimension)
    embeddings = await _by_type(request, result, kinds, body.output_dimension)
    return OrjsonResponse({
        "id": str(uuid.uuid4()), "embeddings": embeddings, "texts": texts,
        "meta": _meta("2", result.prompt_tokens), "response_type": "embeddings_by_type",
    })


@router.post(
    "/v1/embed",
    response_model=EmbedFloatsResponse | EmbedByTypeResponse,
    summary="Embed texts (Cohere v1)",
    description="Cohere's v1 embed: without `embedding_types` the answer is `embeddings_floats` (a list of float "
    f"vectors), with it `embeddings_by_type`. {_LIMITS}",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=DENSE_TASK),
)
async def embed_v1(request: Request, body: Annotated[CohereEmbedV1, Body(openapi_examples=_V1_EXAMPLES)]) -> Any:
    texts = body.text_list()
    result = await _encode(request, body, texts, None)
    answer: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": texts, "meta": _meta("1", result.prompt_tokens)}
    if body.embedding_types is None:
        return OrjsonResponse({**answer, "response_type": "embeddings_floats", "embeddings": result.dense})
    kinds = list(dict.fromkeys(body.embedding_types))
    embeddings = await _by_type(request, result, kinds, None)
    return OrjsonResponse({**answer, "response_type": "embeddings_by_type", "embeddings": embeddings})

"""OpenAI's embeddings API: POST /v1/embeddings, GET /v1/models[/{model}] (the latter also KServe V1's model status)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from embedserve.api.compat import one_of, service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, LOADS, Scope, declare
from embedserve.engine.model_pool import LoadedModel
from embedserve.engine.service import EmbeddingService
from embedserve.models.families import InputType as InputKind
from embedserve.models.tasks import task_names

router = APIRouter(tags=["OpenAI"])

InputType = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
_INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of token-id arrays"


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: Annotated[InputType, one_of(_INPUT_SHAPES)] = Field(description=f"Text to embed: {_INPUT_SHAPES}.")
    model: str | None = Field(None, description="Model id or alias; the first served model when omitted.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64` is little-endian float32, as the openai client requests by default."
    )
    dimensions: StrictInt | None = Field(
        None, description="Cut vectors to this many dimensions and renormalise; 0 (what Infinity's clients send) "
        "means the whole vector."
    )
    user: str | None = Field(None, description="Accepted and ignored.")
    modality: Literal["text"] | None = Field(None, description="Infinity's field: only text is embedded here.")
    input_type: InputKind | None = Field(
        None,
        description="`query` or `document`: apply the model's query or document prefix (its own prompts, "
        "else its family's, e.g. E5's `query: ` / `passage: `). Omitted: the model's default prompt, if any.",
    )


    @field_validator("dimensions")
    @classmethod
    def _zero_is_all(cls, value: int | None) -> int | None:
        return None if value == 0 else value

    @model_validator(mode="after")
    def _input_type_needs_text(self):
        # Prefixes are text; token ids are embedded exactly as given, so a prefix can't apply.
        inputs = self.inputs()
        if self.input_type is not None and inputs and not isinstance(inputs[0], str):
            raise ValueError("'input_type' applies to text input only; token ids are embedded as given")
        return self

    def inputs(self) -> list[str] | list[list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]  # one input given as token ids
        return value


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    tasks: list[str] = Field(description="What the model does: embed, sparse, multivector, score.")


class ModelStatus(ModelCard):
    """GET /v1/models/{model}: OpenAI's model object, plus KServe V1's model status (`name`, `ready`),
    as the two APIs share the path; each client reads its own keys (api/kserve.py)."""

    name: str = Field(description="KServe V1: the model's name as the path gave it.")
    ready: bool = Field(description="KServe V1: whether it serves (true: a model that can't is answered 503).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelNameList(BaseModel):
    """`--models-list-style names`: what "Sentence embeddings over HTTP" clients expect: each model by
    the last part of the name it was started with (`all-MiniLM-L6-v2`), a name /v1/encode takes."""

    data: list[str]
    object: Literal["list"] = "list"


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[Any]:
    """One JSON-ready embedding per row: the float32 row itself, or its bytes in base64."""
    if encoding_format == "base64":
        little = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return list(vectors)


@router.post(
    "/v1/embeddings",
    response_model=EmbeddingResponse,
    summary="Create embeddings",
    **declare(Scope.EMBED, 400, *LOADS, body=True, tasks=DENSE_TASK),
)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Any:
    return OrjsonResponse(await embeddings_payload(service(request), body))


async def embeddings_payload(embedder: EmbeddingService, body: EmbeddingRequest) -> dict:
    """The response body for a validated request (also served by api/embeddings_lane.py)."""
    result = await embedder.embed(body.model, body.inputs(), dimensions=body.dimensions, input_type=body.input_type)
    data = [
        {"object": "embedding", "index": i, "embedding": emb}
        for i, emb in enumerate(encode_vectors(result.vectors, body.encoding_format))
    ]
    return {
        "object": "list",
        "data": data,
        "model": body.model or result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def model_card(model: LoadedModel) -> dict:
    """OpenAI's model object, plus the model's tasks (embed, sparse, multivector, score)."""
    tasks = task_names(model.info.tasks)
    return {"id": model.id, "object": "model", "created": int(model.loaded_at), "owned_by": "embedserve", "tasks": tasks}


@router.get(
    "/v1/models",
    response_model=ModelList | ModelNameList,
    summary="List served models",
    description="OpenAI's model objects; with `--models-list-style names`, the loaded models' names only.",
    **declare(Scope.EMBED),
)
async def list_models(request: Request) -> Any:
    models = service(request).pool.models
    if request.app.state.settings.models_list_style == "names":
        # each model by the name it was started with, as "Sentence embeddings over HTTP" listed them
        return OrjsonResponse({"data": [m.short_name for m in models], "object": "list"})
    return OrjsonResponse({"object": "list", "data": [model_card(m) for m in models]})


@router.get(
    "/v1/models/{model:openai_model}",
    response_model=ModelStatus,
    summary="Retrieve a served model (OpenAI), or its status (KServe V1)",
    **declare(Scope.EMBED, 404, 422, 503),
)
async def get_model(model: Annotated[str, "model id"], request: Request) -> Any:
    return OrjsonResponse({**model_card(service(request).pool.get(model)), "name": model, "ready": True})

"""Drop-in for the "Embeddings Generator" API: GET /, POST /embeddings, model info/load/unload.

Its clients send `{"texts": [...], "model_name": ..., "normalize": ..., "batch_size": ...}`.
`batch_size` is accepted and ignored: the engine batches across all requests by its own token
budget, which a per-request batch size could only make worse. `model_name` loads the model on
demand like any other route (`--load-on-demand`); `normalize` defaults to true, as in that API,
and `false` returns the raw pooled vectors.

The model routes manage the same pool every API shares: a model loaded here serves
/v1/embeddings too, and `--max-loaded-models` evicts the least recently used one. /model/load
obeys `--no-load-on-demand` like every other route, so an operator's fixed set of models can't
be widened by a client.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

from embedserve import __version__
from embedserve.api.compat import Text, embed_texts, service, validate_body
from embedserve.api.openai import EmbeddingRequest, EmbeddingResponse, embeddings_payload
from embedserve.api.ops import DOCS_URL, OPENAPI_URL, REDOC_URL
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, LOADING, LOADS, ErrorShape, Scope, declare
from embedserve.engine.model_pool import LoadedModel
from embedserve.models.tasks import task_names
from embedserve.errors import InvalidInput, ModelNotFound

router = APIRouter(tags=["Embeddings Generator"])
DROP_IN = ErrorShape.DROP_IN  # its clients read an error's message from FastAPI's `detail`

ModelName = Annotated[StrictStr, Field(min_length=1)]


class GenerateRequest(BaseModel):
    texts: list[Text] = Field(min_length=1, description="Texts to embed.")
    model_name: ModelName | None = Field(
        None, description="Model id or alias; the default model when omitted. Loaded on demand."
    )
    normalize: StrictBool = Field(True, description="L2-normalise the vectors; false returns raw pooled vectors.")
    batch_size: StrictInt | None = Field(
        None, ge=1, description="Accepted for compatibility and ignored: the server batches by itself."
    )
    input_type: Literal["query", "document"] | None = Field(
        None, description="Apply the model's query or document prefix (e.g. E5's `query: `)."
    )


class GenerateResponse(BaseModel):
    embeddings: list[list[float]]
    model_name: str
    dimensions: int
    processing_time: float
    total_texts: int


class Fidelity(BaseModel):
    mode: str
    reference: str
    mean_cosine: float
    min_cosine: float
    samples: int
    outputs: dict[str, float] = Field(
        description="Per output beyond the dense vector: sparse_mean/min_cosine, sparse_top10_overlap, "
        "multivector_mean/min_cosine (token by token), maxsim_max_abs_error. A cross-encoder is measured on the "
        "scores of 512 calibration (query, document) pairs, after its activation: score_max_abs_error, "
        "score_mean_abs_error, score_error_bound (what the max error is held to: 1e-4 for fp32, 0.05 for int8/bf16/"
        "fp16, times the scores' spread when over 1), score_rank_agreement and score_min_rank_agreement (mean and "
        "worst per-query Spearman correlation of its 8 documents' scores; also its mean_cosine and min_cosine, which "
        "--min-fidelity holds)"
    )


class Prefixes(BaseModel):
    query: str
    document: str
    default: str
    source: str


class ModelDescription(BaseModel):
    """What `describe` says about one loaded model."""

    model_name: str
    aliases: list[str]
    source: str
    kind: str
    tasks: list[str]
    dimensions: int
    multivector_dimensions: int | None
    max_seq_length: int
    device: str
    backend: str
    dtype: str
    fidelity: Fidelity | None
    speedup_vs_fp32: float | None
    compiled: bool
    compile_speedup: float | None  # compiled over eager on the calibration set, where compiling was tried
    weights_bytes: int | None
    shared_weights_bytes: int  # of weights_bytes, the part held once with other loaded models
    resident_memory_bytes: int | None
    pooling: str
    normalize: bool
    family: str
    prefixes: Prefixes
    load_seconds: float
    loaded_at: float


class GeneratorModelKeys(BaseModel):
    """The Embeddings Generator's own /model/info keys, kept beside ours for its clients."""

    model_type: str
    embedding_dimensions: int
    max_sequence_length: int
    is_loaded: bool


class ModelInfoResponse(ModelDescription, GeneratorModelKeys):
    loaded_models: list[ModelDescription]


class LoadResponse(ModelDescription):
    status: Literal["loaded", "already_loaded"]
    message: str  # the Embeddings Generator's answer: "Model <name> loaded successfully"


class UnloadResponse(BaseModel):
    status: Literal["unloaded", "nothing_loaded"]
    message: str  # the Embeddings Generator's answer
    model_name: str | None  # None: no model was loaded (200, as the Embeddings Generator answers)
    loaded_models: list[str]


class ApiInfo(BaseModel):
    message: str  # the Embeddings Generator's root keys: message, docs, health
    health: str
    name: str
    version: str
    description: str
    default_model: str | None
    models: list[str]
    docs: str
    redoc: str
    openapi: str


def describe(model: LoadedModel) -> dict[str, Any]:
    """Everything a client may want to know about one loaded model."""
    info, prompts = model.info, model.prompts
    return {
        "model_name": model.id,
        "aliases": sorted(model.aliases),
        "source": model.source,
        "kind": info.kind,
        "tasks": task_names(info.tasks),
        "dimensions": info.dimension,
        "multivector_dimensions": info.multivector_dimension,
        "max_seq_length": info.max_seq_length,
        "device": info.device,
        "backend": info.backend,
        "dtype": info.dtype,
        "fidelity": info.fidelity.as_dict() if info.fidelity else None,
        "speedup_vs_fp32": info.speedup,
        "compiled": info.compiled,
        "compile_speedup": info.compile_speedup,
        "weights_bytes": info.weights_bytes,
        "shared_weights_bytes": info.shared_weights_bytes,
        # growth of the process while this model loaded (the first model also pays for the libraries)
        "resident_memory_bytes": model.memory_bytes,
        "pooling": info.pooling,
        "normalize": info.normalize,
        "family": prompts.family,
        "prefixes": {
            "query": prompts.query,
            "document": prompts.document,
            "default": prompts.default,
            "source": prompts.source,
        },
        "load_seconds": model.load_seconds,
        "loaded_at": model.loaded_at,
    }


def as_model_name_error(exc: ModelNotFound) -> ModelNotFound:
    """Same error, pointing at this API's `model_name` rather than OpenAI's `model`."""
    return ModelNotFound(exc.message, param="model_name", code=exc.code)


@router.get(
    "/",
    response_model=ApiInfo,
    summary="API information: version, loaded models, documentation links",
    **declare(Scope.EMBED, errors=DROP_IN),
)
async def root(request: Request) -> Any:
    svc, app = service(request), request.app
    default = svc.pool.default_model
    return OrjsonResponse(
        {
            "message": f"{app.title} API",
            "health": "/health",
            "name": app.title,
            "version": __version__,
            "description": app.description,
            "default_model": default.id if default else None,
            "models": [m.id for m in svc.pool.models],
            "docs": DOCS_URL,
            "redoc": REDOC_URL,
            "openapi": OPENAPI_URL,
        }
    )


_EXAMPLES = {
    "generator": {"summary": "Embeddings Generator", "value": {"texts": ["Hello world", "Embeddings are useful"], "normalize": True}},
    "infinity": {
        "summary": "Infinity (OpenAI's body)",
        "value": {"input": ["Hello world"], "model": "default/not-specified", "encoding_format": "float", "dimensions": 0},
    },
}


@router.post(
    "/embeddings",
    response_model=GenerateResponse | EmbeddingResponse,
    summary="Embed texts (Embeddings Generator's `texts`, or OpenAI's `input` as Infinity serves it)",
    description="A body with `texts` gets the Embeddings Generator's answer; a body with `input` gets OpenAI's "
    "(Infinity's OpenAI route has no `/v1`), with Infinity's `id` and `created`.",
    **declare(Scope.EMBED, 400, *LOADS, body=True, tasks=DENSE_TASK, errors=DROP_IN),
)
async def embeddings(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    if "input" in body and "texts" not in body:
        asked = validate_body(EmbeddingRequest, body)
        payload = await embeddings_payload(service(request), asked)
        return OrjsonResponse({**payload, "id": f"infinity-{uuid.uuid4()}", "created": int(time.time())})
    if "input" in body:
        raise InvalidInput(
            "an /embeddings body has 'texts' (the Embeddings Generator's shape) or 'input' (OpenAI's, as Infinity "
            "serves it), not both", param=None,
        )
    return await generate(validate_body(GenerateRequest, body), request)


async def generate(body: GenerateRequest, request: Request) -> OrjsonResponse:
    started = time.perf_counter()
    try:
        result = await embed_texts(
            request,
            body.texts,
            field="texts",
            model=body.model_name,
            normalize=body.normalize,
            input_type=body.input_type,
        )
    except ModelNotFound as exc:
        raise as_model_name_error(exc) from None
    return OrjsonResponse(
        {
            "embeddings": result.vectors,
            "model_name": body.model_name or result.model,
            "dimensions": int(result.vectors.shape[1]),
            "processing_time": time.perf_counter() - started,
            "total_texts": len(body.texts),
        }
    )


@router.get(
    "/model/info",
    response_model=ModelInfoResponse,
    summary="The default model and every loaded model",
    **declare(Scope.EMBED, 503, errors=DROP_IN),
)
async def model_info(request: Request) -> Any:
    svc = service(request)
    # default_model rather than get(): looking must not count as use for LRU eviction.
    current = svc.pool.default_model or svc.pool.get(None)  # get(None) raises the right 503
    generator_keys = {
        "model_type": current.info.kind,  # "sentence-transformer" for an embedder, as the Embeddings Generator says
        "embedding_dimensions": current.info.dimension,
        "max_sequence_length": current.info.max_seq_length,
        "is_loaded": True,
    }
    return OrjsonResponse(
        {**describe(current), **generator_keys, "loaded_models": [describe(m) for m in svc.pool.models]}
    )


@router.post(
    "/model/load",
    response_model=LoadResponse,
    summary="Load a model (no-op when it is already loaded)",
    **declare(Scope.ADMIN, *LOADING, errors=DROP_IN),
)
async def load_model(
    request: Request,
    model_name: Annotated[str, Query(min_length=1, description="Model id, alias, local folder or Hub id.")],
) -> Any:
    """Loads through `get_or_load`, so `--no-load-on-demand` (a fixed set of models) holds here too."""
    svc = service(request)
    already = svc.pool.find(model_name) is not None
    try:
        model = await svc.pool.get_or_load(model_name, admin=True)
    except ModelNotFound as exc:
        if not svc.settings.load_on_demand:
            exc = ModelNotFound(f"{exc.message}; loading models is turned off (--no-load-on-demand)")
        raise as_model_name_error(exc) from None
    status = "already_loaded" if already else "loaded"
    message = f"Model {model_name} {'was already loaded' if already else 'loaded successfully'}"
    return OrjsonResponse({"status": status, "message": message, **describe(model)})


@router.post(
    "/model/unload",
    response_model=UnloadResponse,
    summary="Unload a model (the default model when none is named)",
    **declare(Scope.ADMIN, 404, 422, 503, errors=DROP_IN),
)
async def unload_model(
    request: Request,
    model_name: Annotated[str | None, Query(min_length=1, description="Loaded model id or alias.")] = None,
) -> Any:
    svc = service(request)
    if model_name is None and svc.pool.default_model is None:  # the Embeddings Generator: 200, nothing to do
        return OrjsonResponse(
            {"status": "nothing_loaded", "message": "No model was loaded", "model_name": None, "loaded_models": []}
        )
    try:
        model = await svc.pool.unload(model_name)
    except ModelNotFound as exc:
        raise as_model_name_error(exc) from None
    return OrjsonResponse({
        "status": "unloaded", "message": "Model unloaded successfully", "model_name": model.id,
        "loaded_models": [m.id for m in svc.pool.models],
    })

"""KServe's protocols: V1 (`POST /v1/models/{m}:predict`) and the Open Inference Protocol V2 (`/v2/...`).

So KServe and Triton clients (tritonclient's HTTP client speaks V2) and an InferenceService with a
custom predictor (deploy/kserve-inferenceservice.yaml) can use the server as it is. Vectors are the
ones /v1/embeddings gives: each model's own pooling and normalisation (KServe's huggingfaceserver
mean-pools every model), and token ids are accepted where texts are.

- V1: `{"instances": [text | token ids, ...]}` -> `{"predictions": [[float, ...], ...]}`. V1's
  `GET /v1/models/{m}` is OpenAI's model card path: api/openai.py answers it with both APIs' keys.
- V2: one input tensor, BYTES texts (shape `[n]` or `[n, 1]`) or INT32/INT64 token ids (shape
  `[n, length]`: a tensor is rectangular, so every row is embedded as given, padding included);
  `data` flat (row-major) or nested. One FP32 output, `output-0` (huggingfaceserver's name), shape
  `[n, dim]`, `data` flat row-major; the request's `id` echoed. Tensors travel as JSON only: a
  request in the binary-data extension is refused with a message saying so; a request for binary
  outputs gets JSON ones, which clients read alike (tritonclient's `as_numpy`).

Errors have KServe's shape, `{"error": "..."}` (api/routing.py `ErrorShape.KSERVE`), with our usual
statuses: 404 unknown model, 422 a malformed request or tensor, 400 a model without dense vectors,
429 a full queue, 503 not ready. Routes read models through the service only, never tensors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from embedserve import __version__
from embedserve.api.compat import Text, embed_texts, one_of, service
from embedserve.api.ops import require_healthy
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import DENSE_TASK, LOADS, ErrorShape, Scope, declare
from embedserve.api.tei import TokenId
from embedserve.errors import InvalidInput


KSERVE = ErrorShape.KSERVE
OUTPUT = "output-0"  # the one output tensor, named as KServe's huggingfaceserver names its embeddings
TEXT_INPUT = "text"  # the input the metadata documents; any name is accepted
MODEL_STATUS = (404, 422, 503)  # reading a model's status: not loaded, a bad path, loading
JSON = "application/json"
Parameter = StrictStr | StrictBool | StrictInt | StrictFloat  # OIP parameters: a string, number or bool


class PredictRequest(BaseModel):
    instances: Annotated[list[Text] | list[list[TokenId]], one_of("a list of texts, or a list of token-id lists")] = Field(
        description="What to embed: texts, or token-id lists of the model's own tokenizer.",
        examples=[["What is Deep Learning?", "Hi"]],
    )


class PredictResponse(BaseModel):
    predictions: list[list[float]]


class InferInput(BaseModel):
    name: StrictStr = Field(description=f"Any name (metadata calls it `{TEXT_INPUT}`).")
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        min_length=1, max_length=2, description="BYTES: `[n]` or `[n, 1]`; INT32/INT64: `[n, length]`."
    )
    datatype: Literal["BYTES", "INT32", "INT64"] = Field(description="BYTES: texts; INT32/INT64: token ids.")
    parameters: dict[str, Parameter] | None = None
    data: Annotated[
        list[Text] | list[list[Text]] | list[TokenId] | list[list[TokenId]],
        one_of("a list of texts or of token ids, flat (row-major) or nested by row"),
    ] = Field(description="The tensor's elements, row-major: flat, or one list per row.")

    @model_validator(mode="after")
    def _fits_its_shape(self):
        self.items()
        return self

    def items(self) -> list[str] | list[list[int]]:
        """The inputs the tensor holds (one per row), or ValueError naming what does not fit."""
        nested = bool(self.data) and isinstance(self.data[0], list)
        flat = [x for row in self.data for x in row] if nested else list(self.data)
        if flat and isinstance(flat[0], str) != (self.datatype == "BYTES"):
            raise ValueError(f"a {self.datatype} tensor's data must be {'texts' if self.datatype == 'BYTES' else 'token ids'}")
        if self.datatype == "BYTES":
            if len(self.shape) == 2 and self.shape[1] != 1:
                raise ValueError(f"a BYTES tensor has shape [n] or [n, 1], not {self.shape}")
            if nested and (len(self.shape) != 2 or any(len(row) != 1 for row in self.data)):
                raise ValueError("nested BYTES data has one text per row, for shape [n, 1]")
            if len(flat) != self.shape[0]:
                raise ValueError(f"shape {self.shape} holds {self.shape[0]} texts but data has {len(flat)}")
            return flat
        if len(self.shape) != 2:
            raise ValueError(f"a {self.datatype} tensor of token ids has shape [n, length], not {self.shape}")
        rows, length = self.shape
        if nested and (len(self.data) != rows or any(len(row) != length for row in self.data)):
            raise ValueError(f"nested data does not have shape {self.shape}")
        if len(flat) != rows * length:
            raise ValueError(f"shape {self.shape} holds {rows * length} ids but data has {len(flat)}")
        return [flat[i * length : (i + 1) * length] for i in range(rows)]


class RequestedOutput(BaseModel):
    name: StrictStr = Field(description=f"`{OUTPUT}`, the only output.")
    parameters: dict[str, Parameter] | None = Field(None, description="Accepted; outputs are JSON whatever they ask.")


class InferRequest(BaseModel):
    id: StrictStr | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Parameter] | None = Field(None, description="Accepted and ignored (none are defined).")
    inputs: list[InferInput] = Field(min_length=1, max_length=1, description="One tensor: texts or token ids.")
    outputs: list[RequestedOutput] | None = Field(None, description=f"Omitted, or `{OUTPUT}`.")

    @model_validator(mode="after")
    def _known_outputs(self):
        unknown = [o.name for o in self.outputs or () if o.name != OUTPUT]
        if unknown:
            raise ValueError(f"no output named {unknown[0]!r}; the model's output is {OUTPUT!r}")
        return self


_INFER_EXAMPLE = {"id": "42", "inputs": [{"name": TEXT_INPUT, "shape": [2], "datatype": "BYTES", "data": ["What is BGE M3?", "Definition of BM25"]}]}


class OutputTensor(BaseModel):
    name: str
    datatype: Literal["FP32"]
    shape: list[int]
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    id: str | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class KServeRoute(APIRoute):
    """A body is JSON whatever its Content-Type says, as KServe's own server reads it: tritonclient
    sends none (FastAPI would then see bytes, not an object). A body in the binary tensor extension
    (tritonclient's default `binary_data=True`) is refused by name, before it fails to parse."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def handle(request: Request):
            headers = request.headers
            if "inference-header-content-length" in headers:
                raise InvalidInput("binary tensor data is not served here: send each tensor's `data` as JSON "
                                   "(tritonclient: `set_data_from_numpy(..., binary_data=False)`)")
            if request.method == "POST" and headers.get("content-type", "").split(";")[0].strip().lower() != JSON:
                raw = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"]
                request.scope["headers"] = [*raw, (b"content-type", JSON.encode())]
                request = Request(request.scope, request.receive)  # its headers read afresh
            return await handler(request)

        return handle


router = APIRouter(tags=["KServe"], route_class=KServeRoute)


# ---- V1 -------------------------------------------------------------------------------------

@router.post(
    "/v1/models/{model:model_name}:predict",
    response_model=PredictResponse,
    summary="One vector per instance (KServe V1)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=DENSE_TASK, errors=KSERVE),
)
async def predict(model: str, body: PredictRequest, request: Request) -> Any:
    result = await embed_texts(request, body.instances, field="instances", model=model)
    return OrjsonResponse({"predictions": result.vectors})


# ---- Open Inference Protocol V2 -------------------------------------------------------------

@router.get("/v2/health/live", response_model=ServerLive, summary="Liveness (KServe V2)", **declare(Scope.OPEN, errors=KSERVE))
async def v2_live() -> Any:
    return OrjsonResponse({"live": True})


@router.get(
    "/v2/health/ready",
    response_model=ServerReady,
    summary="503 until a model serves, as /ready (KServe V2)",
    **declare(Scope.OPEN, 503, errors=KSERVE),
)
async def v2_ready(request: Request) -> Any:
    require_healthy(request)
    return OrjsonResponse({"ready": True})


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata (KServe V2)", **declare(Scope.EMBED, errors=KSERVE))
async def v2_server_metadata() -> Any:
    return OrjsonResponse({"name": "embedserve", "version": __version__, "extensions": []})


@router.get(
    "/v2/models/{model:model_name}/ready",
    response_model=ModelReady,
    summary="Whether a model serves (KServe V2)",
    **declare(Scope.EMBED, *MODEL_STATUS, errors=KSERVE),
)
async def v2_model_ready(model: str, request: Request) -> Any:
    service(request).pool.get(model)  # 404 / 503 when it can't serve
    return OrjsonResponse({"name": model, "ready": True})


@router.get(
    "/v2/models/{model:v2_model}",
    response_model=ModelMetadata,
    summary="A model's input and output tensors (KServe V2)",
    **declare(Scope.EMBED, *MODEL_STATUS, errors=KSERVE),
)
async def v2_model_metadata(model: str, request: Request) -> Any:
    info = service(request).pool.get(model).info
    return OrjsonResponse({
        "name": model,
        "versions": [],
        "platform": f"embedserve_{info.backend}",
        "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, info.dimension]}],
    })


@router.post(
    "/v2/models/{model:model_name}/infer",
    response_model=InferResponse,
    response_model_exclude_none=True,
    summary="One FP32 vector per input row (KServe V2)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=DENSE_TASK, errors=KSERVE),
)
async def v2_infer(model: str, body: Annotated[InferRequest, Body(examples=[_INFER_EXAMPLE])], request: Request) -> Any:
    result = await embed_texts(request, body.inputs[0].items(), field="inputs[0].data", model=model)
    vectors = result.vectors
    answer: dict[str, Any] = {"model_name": model}
    if body.id is not None:
        answer["id"] = body.id
    answer["outputs"] = [{"name": OUTPUT, "datatype": "FP32", "shape": list(vectors.shape), "data": vectors.reshape(-1)}]
    return OrjsonResponse(answer)

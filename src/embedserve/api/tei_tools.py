"""Text Embeddings Inference's tokenizer and info routes: POST /tokenize, POST /decode, GET /info.

`/tokenize` gives every token of each input as TEI does, `{"id", "text", "special", "start",
"stop"}`: a special token's text is the token itself and it has no offsets; any other's text is the
stretch of the input it covers (character offsets), after the prompt the model would put first
(`prompt_name`'s, else its default), so it shows what /embed reads. Nothing is truncated.
`/decode` turns ids (one list, or a list of lists) back into text with the model's tokenizer.
Both reach the tokenizer through the service (engine/service.py `tokens`, `decode`).

`/info` is TEI's `Info` for the default model, in our terms: `max_concurrent_requests` is
--max-queue (per model), `max_batch_requests` --max-batch-size, `max_client_batch_size`
--max-inputs, `auto_truncate` --truncate, `max_input_length` the model's maximum sequence length,
`tokenization_workers` the threads that tokenize large requests (the event loop tokenizes small
ones), `version` embedserve's. `model_type` says what TEI would call the model: a classifier or
reranker (more labels, or one) with its labels, else an embedding model with its pooling (`splade`
for a sparse-only model).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictStr,
)

from embedserve import __version__
from embedserve.api.compat import Text, one_of, relabel, service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADING, ErrorShape, Scope, declare
from embedserve.api.tei import TokenId
from embedserve.engine.model_pool import LoadedModel
from embedserve.engine.service import label_names
from embedserve.errors import InvalidInput
from embedserve.models.tasks import Task

router = APIRouter(tags=["Text Embeddings Inference"])

TOOLS = (*LOADING, 413)  # the model a request names may load first; too much text: 413 (nothing queues: no 429)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_POOLING = {"lasttoken": "last_token"}  # sentence-transformers' names -> TEI's


class TokenizeRequest(BaseModel):
    inputs: Text | list[Text] = Field(description="A text, or a list of texts.", examples=["What is Deep Learning?"])
    add_special_tokens: StrictBool = Field(True, description="Add the tokens the model puts around a text ([CLS], [SEP]).")
    prompt_name: StrictStr | None = Field(None, description="A prompt of the model's own `prompts`, put before each input.")
    model: StrictStr | None = Field(None, description="Model id or alias (an embedserve extension); the default model when omitted.")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class DecodeRequest(BaseModel):
    ids: Annotated[list[TokenId] | list[list[TokenId]], one_of("a list of token ids (integers from 0), or a list of such lists")] = Field(description="Token ids, or a list of id lists.", examples=[[101, 3231, 102]])
    skip_special_tokens: StrictBool = Field(True, description="Leave out special tokens ([CLS], [SEP], padding).")
    model: StrictStr | None = Field(None, description="Model id or alias (an embedserve extension); the default model when omitted.")


    def sequences(self) -> list[list[int]]:
        ids = self.ids
        return ids if ids and isinstance(ids[0], list) else [ids]  # [] is one empty sequence, as TEI reads it


@router.post(
    "/tokenize",
    response_model=list[list[SimpleToken]],
    summary="The tokens of each input, with their offsets (TEI)",
    **declare(Scope.EMBED, *TOOLS, body=True, errors=ErrorShape.TEI),
)
async def tokenize(body: TokenizeRequest, request: Request) -> Any:
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    try:
        tokens = await service(request).tokens(
            body.model, texts, add_special_tokens=body.add_special_tokens, prompt_name=body.prompt_name
        )
    except InvalidInput as exc:
        raise relabel(exc, "inputs") from None
    return OrjsonResponse([
        [{"id": t.id, "text": t.text, "special": t.special, "start": t.start, "stop": t.stop} for t in sequence]
        for sequence in tokens
    ])


@router.post(
    "/decode",
    response_model=list[str],
    summary="The text of token ids (TEI)",
    **declare(Scope.EMBED, *TOOLS, body=True, errors=ErrorShape.TEI),
)
async def decode(body: DecodeRequest, request: Request) -> Any:
    try:
        texts = await service(request).decode(body.model, body.sequences(), skip_special_tokens=body.skip_special_tokens)
    except InvalidInput as exc:
        raise relabel(exc, "ids") from None
    return OrjsonResponse(texts)


class EmbeddingModelType(BaseModel):
    pooling: str


class ClassifierModelType(BaseModel):
    id2label: dict[str, str]
    label2id: dict[str, int]


class ModelType(BaseModel):
    """Exactly one of the three, as TEI's externally tagged `ModelType`."""

    embedding: EmbeddingModelType | None = None
    classifier: ClassifierModelType | None = None
    reranker: ClassifierModelType | None = None


class Info(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    served_model_name: str
    model_type: ModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None
    docker_label: str | None


def model_type(model: LoadedModel) -> dict[str, Any]:
    info = model.info
    if Task.SCORE in info.tasks:
        names = label_names(info)
        labels = {"id2label": {str(i): name for i, name in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)}}
        return {"reranker" if len(names) == 1 else "classifier": labels}
    pooling = "splade" if info.tasks == frozenset({Task.SPARSE}) else _POOLING.get(info.pooling, info.pooling)
    return {"embedding": {"pooling": pooling}}


@router.get(
    "/info",
    response_model=Info,
    summary="The served model and the server's limits, in TEI's shape",
    **declare(Scope.EMBED, 503, errors=ErrorShape.TEI),
)
async def info(request: Request) -> Any:
    model = service(request).pool.get(None)
    settings = request.app.state.settings
    return OrjsonResponse({
        "model_id": model.id,
        "model_sha": None,
        "model_dtype": _DTYPES.get(model.info.dtype, model.info.dtype),
        "served_model_name": model.id,
        "model_type": model_type(model),
        "max_concurrent_requests": settings.max_queue,
        "max_input_length": model.info.max_seq_length,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": settings.max_batch_size,
        "max_client_batch_size": settings.max_inputs,
        "auto_truncate": settings.truncate,
        # asyncio.to_thread's pool (ThreadPoolExecutor's default size) tokenizes the large requests
        "tokenization_workers": min(32, (os.cpu_count() or 1) + 4),
        "version": __version__,
        "sha": None,
        "docker_label": None,
    })

"""Text Embeddings Inference's root route, POST /: what the model does decides what it answers.

TEI routes its root by the model's type, and clients post there: `huggingface_hub`'s
`InferenceClient(model="http://host:port").feature_extraction(...)` (Haystack's and LangChain's TEI
embedders go through it) posts `{"inputs", "normalize", "truncate", ...}` to the URL itself, and
`.sentence_similarity(...)` posts `{"inputs": {"source_sentence", "sentences"}, "parameters"}`.

Here, in order:
- `inputs` holding `source_sentence`: /similarity (what TEI answers with TASK=sentence-similarity;
  the body says it, so no setting is needed);
- a model that scores (`score`): with one label and no `inputs`, /rerank in TEI's shape
  (`{"query", "texts"}`, a reranker); otherwise /predict (a classifier; a reranker sent `inputs`
  gets its sigmoid scores where TEI would refuse the body);
- a model that only gives sparse weights (SPLADE): /embed_sparse;
- anything else: /embed (a model without dense vectors answers 400 naming its tasks).

The choice reads the model's tasks (`model` in the body, else the default model), never its class.
`GET /` stays the Embeddings Generator's API information (api/generator.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from embedserve.api.compat import service, validate_body
from embedserve.api.rerank import tei_ranks
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, ErrorShape, Scope, declare
from embedserve.api.tei import (
    EmbedRequest,
    SimilarityRequest,
    TeiRequest,
    embed,
    embed_sparse,
    similarity,
)
from embedserve.api.tei_predict import PredictRequest, predictions
from embedserve.models.tasks import Task

router = APIRouter(tags=["Text Embeddings Inference"])

_EXAMPLES = {
    "embed": {"summary": "Embed (an embedding model; huggingface_hub's feature_extraction)", "value": {"inputs": ["What is Deep Learning?", "Hi"], "normalize": True, "truncate": True}},
    "similarity": {"summary": "Sentence similarity (huggingface_hub's sentence_similarity)", "value": {"inputs": {"source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?"]}, "parameters": {}}},
    "rerank": {"summary": "Rerank (a one-label cross-encoder)", "value": {"query": "What is Deep Learning?", "texts": ["Deep Learning is...", "Hi"]}},
    "predict": {"summary": "Classify (a cross-encoder with several labels)", "value": {"inputs": ["A man is eating.", "A man eats something."]}},
}


@router.post(
    "/",
    summary="Embed, classify, rerank or compare, by what the model does (TEI's root route)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.EMBED, Task.SPARSE, Task.SCORE), errors=ErrorShape.TEI),
)
async def root(request: Request, body: Annotated[dict[str, Any], Body(openapi_examples=_EXAMPLES)]) -> Any:
    inputs = body.get("inputs")
    if isinstance(inputs, dict) and "source_sentence" in inputs:
        return await similarity(validate_body(SimilarityRequest, body), request)
    name = body.get("model")
    model = await service(request).pool.get_or_load(name if isinstance(name, str) else None)
    tasks = model.info.tasks
    if Task.SCORE in tasks:
        if (model.info.score_labels or 1) == 1 and "inputs" not in body:
            return OrjsonResponse(await tei_ranks(request, body))
        return OrjsonResponse(await predictions(request, validate_body(PredictRequest, body)))
    if tasks & {Task.EMBED, Task.SPARSE} == {Task.SPARSE}:
        return await embed_sparse(validate_body(TeiRequest, body), request)
    return await embed(validate_body(EmbedRequest, body), request)

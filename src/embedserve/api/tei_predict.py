"""Text Embeddings Inference's sequence classification: POST /predict.

`inputs` is read exactly as TEI reads it: a string is one text; a list of strings is one sequence,
a pair when it holds two (`["premise", "hypothesis"]`, one text when it holds one); a list of lists
is a batch, each a single text `["a"]` or a pair `["a", "b"]`. Every label's score comes back,
highest first (as TEI sorts them), as `[{"score", "label"}]`; a batch gives one such list per
sequence. Scores are a softmax over the labels, a sigmoid for a one-label model, unless
`raw_scores` (TEI's activation, whatever the model's own: a multi-label sentence-transformers
CrossEncoder would answer raw logits). Labels are the model's config `id2label`.

A single text is tokenized as one sequence, the way the model's tokenizer encodes it alone
(engine/processing.py `tokenize_sequences`), never as a pair with an empty second text. Any model
that scores answers (a reranker too, with its sigmoid); one that can't is a 400 naming its tasks.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body, Request
from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    StrictStr,
)

from embedserve.api.compat import Text, TruncationDirection, one_of, relabel, service
from embedserve.api.responses import OrjsonResponse
from embedserve.api.routing import LOADS, ErrorShape, Scope, declare
from embedserve.engine.service import label_names
from embedserve.errors import InvalidInput
from embedserve.models.tasks import Task

router = APIRouter(tags=["Text Embeddings Inference"])

TextOrPair = Annotated[list[Text], Field(min_length=1, max_length=2)]  # one text, or a pair
_SHAPES = "a string, a pair of strings [string, string], or a batch of texts and pairs [[string], [string, string], ...]"
_EXAMPLES = {
    "single": {"summary": "One text", "value": {"inputs": "I like you. I love you."}},
    "pair": {"summary": "One pair", "value": {"inputs": ["A man is eating.", "A man eats something."]}},
    "batch": {"summary": "A batch of texts and pairs", "value": {"inputs": [["I like you."], ["A man eats.", "A man is eating."]], "raw_scores": True}},
}


class PredictRequest(BaseModel):
    inputs: Annotated[Text | TextOrPair | Annotated[list[TextOrPair], Field(min_length=1)], one_of(_SHAPES)] = Field(
        description=f"What to classify: {_SHAPES}."
    )
    truncate: StrictBool | None = Field(None, description="Cut inputs longer than the model takes; absent: --truncate.")
    truncation_direction: TruncationDirection = Field("Right", description="Which end to cut. Only `Right` is served.")
    raw_scores: StrictBool = Field(False, description="The model's raw logits instead of softmax (sigmoid for one label).")
    model: StrictStr | None = Field(None, description="Model id or alias (an embedserve extension); the default model when omitted.")


    def sequences(self) -> tuple[list[tuple[str, ...]], bool]:
        """The sequences to score, and whether the request was a batch (TEI's `PredictInput`)."""
        value = self.inputs
        if isinstance(value, str):
            return [(value,)], False
        if isinstance(value[0], str):
            return [tuple(value)], False
        return [tuple(sequence) for sequence in value], True


class Prediction(BaseModel):
    score: float
    label: str


async def predictions(request: Request, body: PredictRequest) -> list[Any]:
    """TEI's /predict answer (also what TEI's POST / answers for a classifier, api/tei_root.py)."""
    sequences, batch = body.sequences()
    try:
        result = await service(request).classify(body.model, sequences, raw=body.raw_scores, truncate=body.truncate)
    except InvalidInput as exc:
        raise relabel(exc, "inputs") from None
    names = label_names(result.model.info)
    answers = [
        # TEI sorts ascending and reverses: the highest first, ties the later label first.
        [{"score": float(row[j]), "label": names[j]} for j in np.argsort(row, kind="stable")[::-1]]
        for row in result.scores
    ]
    return answers if batch else answers[0]


@router.post(
    "/predict",
    response_model=list[Prediction] | list[list[Prediction]],
    summary="Every label's score of a text, a pair or a batch of them (TEI)",
    **declare(Scope.EMBED, *LOADS, body=True, tasks=(Task.SCORE,), errors=ErrorShape.TEI),
)
async def predict(body: Annotated[PredictRequest, Body(openapi_examples=_EXAMPLES)], request: Request) -> Any:
    return OrjsonResponse(await predictions(request, body))

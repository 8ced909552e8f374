"""Pre- and post-processing around the forward pass, as plain functions.

The service calls them for every request; bulk corpus embedding and training call the same
functions outside the event loop, so a vector computed offline is the one the server gives.
Before: validate inputs in model terms, apply the query/document prefix, tokenize (or wrap
token ids). After: cut and normalise dense vectors, keep the strongest sparse terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedserve.backends.base import Backend, SparseVector, TokenIds
from embedserve.errors import BadRequest, InvalidInput

Inputs = Sequence[str] | Sequence[Sequence[int]]


def check_inputs(inputs: Inputs, max_inputs: int) -> None:
    """422 for an empty request, too many inputs, an empty item or text that isn't Unicode."""
    if len(inputs) == 0:
        raise InvalidInput("'input' must not be empty", param="input")
    if len(inputs) > max_inputs:
        raise InvalidInput(
            f"'input' has {len(inputs)} items; at most {max_inputs} are allowed per request", param="input"
        )
    for i, item in enumerate(inputs):
        if len(item) == 0:
            kind = "string" if isinstance(item, str) else "token list"
            raise InvalidInput(f"input[{i}] is an empty {kind}", param=f"input[{i}]")
        if isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON, not text
                raise InvalidInput(
                    f"input[{i}] is not valid Unicode text (it has an unpaired surrogate)", param=f"input[{i}]"
                ) from None


def check_query(query: str) -> None:
    """A rerank query is one text: the same checks as any input, naming `query`."""
    try:
        check_inputs([query], 1)
    except InvalidInput as exc:
        raise InvalidInput(exc.message.replace("input[0]", "query"), param="query") from None


def tokenize_inputs(
    backend: Backend, model_id: str, inputs: Inputs, *, prefix: str = "", truncate: bool = True, role: str | None = None
) -> list[TokenIds]:
    """Token ids of texts (with `prefix`) or of token-id inputs (special tokens added).

    `role` ("query" / "document") tokenizes for a model that encodes them apart. Token ids
    outside the vocabulary, and (truncation off) inputs longer than the model takes, are 422s
    naming the input.
    """
    info = backend.info
    if isinstance(inputs[0], str):
        texts = [prefix + t for t in inputs] if prefix else list(inputs)
        if role is not None and backend.uses_roles:
            sequences = backend.tokenize_role(texts, truncate=truncate, role=role)
        else:
            sequences = backend.tokenize(texts, truncate=truncate)
    else:
        for i, ids in enumerate(inputs):
            bad = next((t for t in ids if not 0 <= t < info.vocab_size), None)
            if bad is not None:
                raise InvalidInput(
                    f"input[{i}] has token id {bad}, outside the vocabulary of model '{model_id}' "
                    f"(0..{info.vocab_size - 1})",
                    param=f"input[{i}]",
                )
        sequences = backend.wrap_ids(inputs, truncate=truncate)
    if not truncate:
        for i, seq in enumerate(sequences):
            if len(seq) > info.max_seq_length:
                raise InvalidInput(
                    # "at least": a long text is tokenized only as far as needed to know it is too long
                    f"input[{i}] has at least {len(seq)} tokens; model '{model_id}' accepts at most "
                    f"{info.max_seq_length} and truncation is off",
                    param=f"input[{i}]",
                )
    return sequences


def check_dimensions(dimensions: int | None, available: int, model_id: str) -> None:
    if dimensions is not None and not 1 <= dimensions <= available:
        raise BadRequest(
            f"dimensions must be between 1 and {available} for model '{model_id}', got {dimensions}",
            param="dimensions",
        )


def finish_dense(vectors: np.ndarray, *, normalize: bool, dimensions: int | None = None) -> np.ndarray:
    """Cut to `dimensions` (then always renormalise, as OpenAI does) and/or L2-normalise."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = np.ascontiguousarray(vectors[:, :dimensions])
        normalize = True
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors.astype(np.float32, copy=False)


def finish_sparse(vector: SparseVector, *, top_k: int | None = None, min_weight: float | None = None) -> SparseVector:
    """Keep the `top_k` heaviest terms and/or those weighing at least `min_weight` (ids stay ascending)."""
    indices, values = vector.indices, vector.values
    if min_weight is not None:
        keep = values >= min_weight
        indices, values = indices[keep], values[keep]
    if top_k is not None and values.size > top_k:
        strongest = np.sort(np.argsort(-values, kind="stable")[:top_k])
        indices, values = indices[strongest], values[strongest]
    return SparseVector(indices, values)

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


def check_count(inputs: Sequence, max_inputs: int) -> None:
    """422 for an empty request or more than `max_inputs` items."""
    if len(inputs) == 0:
        raise InvalidInput("'input' must not be empty", param="input")
    if len(inputs) > max_inputs:
        raise InvalidInput(
            f"'input' has {len(inputs)} items; at most {max_inputs} are allowed per request", param="input"
        )


def check_inputs(inputs: Inputs, max_inputs: int) -> None:
    """422 for an empty request, too many inputs, an empty item or text that isn't Unicode."""
    check_count(inputs, max_inputs)
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
        check_token_ids(inputs, info.vocab_size, model_id)
        sequences = backend.wrap_ids(inputs, truncate=truncate)
    if not truncate:
        check_lengths(sequences, info.max_seq_length, model_id)
    return sequences


def check_token_ids(inputs: Sequence[Sequence[int]], vocab_size: int, model_id: str) -> None:
    """422 naming the first input holding an id outside the model's vocabulary."""
    for i, ids in enumerate(inputs):
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidInput(
                f"input[{i}] has token id {bad}, outside the vocabulary of model '{model_id}' (0..{vocab_size - 1})",
                param=f"input[{i}]",
            )


def check_lengths(sequences: Sequence[TokenIds], max_seq_length: int, model_id: str) -> None:
    """422 naming the first sequence longer than the model takes (truncation off)."""
    for i, seq in enumerate(sequences):
        if len(seq) > max_seq_length:
            raise InvalidInput(
                # "at least": a long text is tokenized only as far as needed to know it is too long
                f"input[{i}] has at least {len(seq)} tokens; model '{model_id}' accepts at most "
                f"{max_seq_length} and truncation is off",
                param=f"input[{i}]",
            )


def check_sequences(sequences: Sequence[Sequence[str]], max_inputs: int) -> None:
    """`check_inputs` for a classifier's inputs, each one text or a pair: an error in the j-th text
    of sequence i names `input[i][j]` (the param stays `input[i]`, the sequence)."""
    check_inputs(sequences, max_inputs)
    for i, sequence in enumerate(sequences):
        try:
            check_inputs(list(sequence), 2)
        except InvalidInput as exc:
            raise InvalidInput(exc.message.replace("input[", f"input[{i}][", 1), param=f"input[{i}]") from None


def tokenize_sequences(
    backend: Backend, model_id: str, sequences: Sequence[Sequence[str]], *, truncate: bool
) -> tuple[list[TokenIds], list[TokenIds] | None]:
    """Token ids (and segment ids) of a classifier's inputs: a pair as the tokenizer joins two texts
    (`tokenize_pairs`), a single text alone, as the tokenizer encodes one sequence ([CLS] text [SEP],
    all segment 0), never as a pair with an empty side, which would add a separator the model
    never saw in training."""
    ids: list[TokenIds] = [[] for _ in sequences]
    types: list[TokenIds | None] = [None] * len(sequences)
    singles = [i for i, sequence in enumerate(sequences) if len(sequence) == 1]
    pairs = [i for i, sequence in enumerate(sequences) if len(sequence) == 2]
    if singles:
        for i, seq in zip(singles, backend.tokenize([sequences[i][0] for i in singles], truncate=truncate)):
            ids[i], types[i] = seq, [0] * len(seq)
    if pairs:
        asked = [(sequences[i][0], sequences[i][1]) for i in pairs]
        pair_ids, pair_types = backend.tokenize_pairs(asked, truncate=truncate)
        for k, i in enumerate(pairs):
            ids[i], types[i] = pair_ids[k], pair_types[k] if pair_types is not None else None
    if not truncate:
        check_lengths(ids, backend.info.max_seq_length, model_id)
    # A model without segment ids (no pair gave any) takes none at all: the worker drops a batch's
    # segments when any row has none, so singles' zeros never reach it alone.
    return ids, (None if any(t is None for t in types) else types)  # type: ignore[return-value]


def label_probabilities(logits: np.ndarray) -> np.ndarray:
    """TEI's /predict activation: a softmax over the labels, or a sigmoid when there is one."""
    logits = logits.astype(np.float64)
    if logits.shape[1] == 1:
        return (1 / (1 + np.exp(-logits))).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)


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

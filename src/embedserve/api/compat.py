"""Shared by the drop-in routes of other embedding servers (flask_compat, generator, encode, vectorize).

Those APIs name their texts differently (`texts`, `items`, `text`, or the keys of a map), but
they all embed through the one `EmbeddingService.embed`. The service reports bad inputs as
`input` / `input[i]` (OpenAI's field); `embed_texts` rewrites those errors in the caller's own
terms, so a client of `/embeddings` reads "texts[1] ..." and one of `/embedding` reads "'id2' ...".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, BaseModel, StrictStr, StringConstraints, ValidationError, WrapValidator

from embedserve.engine.service import EmbeddingService, EmbedResult, EncodeResult
from embedserve.errors import InvalidInput
from embedserve.models.families import InputType
from embedserve.models.tasks import Task

# A text to embed: a JSON string (no coercion from numbers or booleans), never empty.
Text = Annotated[StrictStr, StringConstraints(min_length=1)]


def _right_only(value: str) -> str:
    if value.lower() != "right":
        raise ValueError("only 'Right' truncation is served here")
    return value


# TEI's `truncation_direction`: accepted as TEI spells it; only the right end is ever cut here.
TruncationDirection = Annotated[Literal["Right", "Left", "right", "left"], AfterValidator(_right_only)]

_ITEM = re.compile(r"input\[(\d+)\]")


def one_of(shapes: str) -> WrapValidator:
    """For a field that takes one of several shapes (a text, a list, token ids...): one error that
    names every shape it takes, instead of pydantic's one error per member of the union."""

    def check(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"must be {shapes}") from None

    return WrapValidator(check)


def service(request: Request) -> EmbeddingService:
    return request.app.state.service


def validate_body(model: type[BaseModel], data: object) -> BaseModel:
    """Validate a body the route had to inspect first (e.g. which of two shapes it is).

    Errors become the same RequestValidationError FastAPI raises for declared bodies, so they
    get the same 422 and the same message naming the offending field or key.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def embed_texts(
    request: Request,
    texts: Sequence[str],
    *,
    field: str,
    keys: Sequence[str] | None = None,
    model: str | None = None,
    normalize: bool | None = None,
    input_type: InputType | None = None,
) -> EmbedResult:
    """`service.embed` on `texts`, with input errors naming `field[i]`, or `keys[i]` when given."""
    try:
        return await service(request).embed(model, texts, normalize=normalize, input_type=input_type)
    except InvalidInput as exc:
        raise relabel(exc, field, keys) from None


async def encode_texts(
    request: Request,
    texts: Sequence[str],
    tasks: frozenset[Task],
    *,
    field: str,
    keys: Sequence[str] | None = None,
    **options,
) -> EncodeResult:
    """`service.encode` on `texts`, with input errors naming `field[i]`, or `keys[i]` when given."""
    try:
        return await service(request).encode(options.pop("model", None), texts, tasks, **options)
    except InvalidInput as exc:
        raise relabel(exc, field, keys) from None


def relabel(exc: InvalidInput, field: str, keys: Sequence[str] | None = None) -> InvalidInput:
    """The same error, naming the caller's field (or map key) instead of `input`."""
    param = exc.param or ""
    if param == "input":
        whole = field if keys is not None else f"'{field}'"
        message = exc.message.replace("'input'", whole, 1)
        return InvalidInput(message, param=None if keys is not None else field, code=exc.code)
    item = _ITEM.fullmatch(param)
    if item is None:
        return exc
    index = int(item[1])
    if keys is not None and index < len(keys):
        name, shown = keys[index], f"'{keys[index]}'"
    else:
        name = shown = f"{field}[{index}]"
    return InvalidInput(exc.message.replace(param, shown, 1), param=name, code=exc.code)

"""JSON responses via orjson (numpy arrays serialise straight from their buffers)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=_OPTIONS)


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape, used for every error this server returns. Text that can't be UTF-8
    (a client's unpaired surrogate quoted back) is escaped, so an error always renders."""
    return {"error": {"message": renderable(message), "type": type_, "param": renderable(param), "code": code}}


def renderable(text: str | None) -> str | None:
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text

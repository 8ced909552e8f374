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
    """OpenAI's error shape, used for every error this server returns."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}

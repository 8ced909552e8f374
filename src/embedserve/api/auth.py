"""API keys and scopes.

Keys come from `--api-key` (every scope) and `--api-key-file` (one key per line, optionally
followed by its scopes; re-read on SIGHUP). A request presents its key as `Authorization:
Bearer <key>`, a bare `Authorization: <key>` (what some TEI clients send) or `X-Api-Key: <key>`.

The check is middleware, after the route is known (api/routing.py), so it covers every route
of every API family and the embeddings lane alike, and runs before the body is read: a client
without a key costs the server no body and no model work. Keys are compared as SHA-256
digests with `hmac.compare_digest` against every configured key, never stopping at the first
match, so the time taken says nothing about which key, or how much of one, was right. No key
ever reaches a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from embedserve.api.middleware import send_error
from embedserve.api.routing import ROUTE, Scope as RouteScope, route_scope
from embedserve.errors import Forbidden, Unauthorized
from embedserve.settings import Settings

log = logging.getLogger(__name__)

KEY_SCOPES = frozenset({RouteScope.EMBED, RouteScope.ADMIN})  # what a key can hold


class KeyFileError(ValueError):
    """The key file can't be read or has a line we don't understand (the message never holds a key)."""


@dataclass(frozen=True)
class _Key:
    digest: bytes
    scopes: frozenset[RouteScope]


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def parse_key_file(path: Path) -> list[tuple[str, frozenset[RouteScope]]]:
    """(key, scopes) per line of `path`. Blank lines and lines starting with # are skipped;
    scopes follow the key, separated by commas and/or spaces; none listed = every scope."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file: {type(exc).__name__}") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        names = [name for name in rest.replace(",", " ").split() if name]
        unknown = [name for name in names if name not in KEY_SCOPES]
        if unknown:
            raise KeyFileError(
                f"API key file line {number}: unknown scope {unknown[0]!r} (scopes are: embed, admin)"
            )
        keys.append((key, frozenset(RouteScope(n) for n in names) or KEY_SCOPES))
    return keys


class KeyStore:
    """The configured keys; `enabled` is False when there are none (the server is open)."""

    def __init__(self, settings: Settings):
        self._flag_keys = [(secret.get_secret_value(), KEY_SCOPES) for secret in settings.api_keys]
        self._file = settings.api_key_file
        self._keys: tuple[_Key, ...] = ()
        self._load()  # a bad key file stops start-up

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def _load(self) -> None:
        entries = list(self._flag_keys)
        if self._file is not None:
            entries += parse_key_file(self._file)
        self._keys = tuple(_Key(_digest(key.encode("utf-8")), scopes) for key, scopes in entries if key)

    def reload(self) -> bool:
        """Re-read the key file (SIGHUP). On an error the keys in force stay, and the log says why."""
        try:
            self._load()
        except KeyFileError as exc:
            log.error("API keys not reloaded, the previous ones stay in force: %s", exc)
            return False
        log.info("API keys reloaded", extra={"keys": len(self._keys)})
        return True

    def scopes_for(self, presented: bytes) -> frozenset[RouteScope] | None:
        """The scopes of the presented key, or None when it is not a configured key."""
        digest = _digest(presented)
        granted: frozenset[RouteScope] | None = None
        for key in self._keys:  # every key is compared, whatever matched before
            if hmac.compare_digest(digest, key.digest):
                granted = key.scopes if granted is None else granted | key.scopes
        return granted


def presented_key(scope: Scope) -> bytes | None:
    """The key from `Authorization: Bearer <key>`, `Authorization: <key>` or `X-Api-Key: <key>`."""
    authorization = api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization" and authorization is None:
            authorization = value.strip()
        elif name == b"x-api-key" and api_key is None:
            api_key = value.strip()
    if authorization:
        scheme, _, rest = authorization.partition(b" ")
        return rest.strip() if scheme.lower() == b"bearer" and rest.strip() else authorization
    return api_key or None


class AuthMiddleware:
    """401 without a known key, 403 without the route's scope; open routes and an open server pass.

    A request that matched no route needs the `embed` scope: with keys configured, nothing
    about the server (not even which paths exist) is told to a client without one.
    """

    def __init__(self, app: ASGIApp, *, keys: KeyStore, protect_metrics: bool):
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys.enabled:
            error = self.check(scope)
            if error is not None:
                await send_error(send, error, scope=scope)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> Unauthorized | Forbidden | None:
        needed = route_scope(scope.get(ROUTE)) or RouteScope.EMBED
        if needed is RouteScope.OPEN or (needed is RouteScope.METRICS and not self.protect_metrics):
            return None
        presented = presented_key(scope)
        if presented is None:
            return Unauthorized(
                "No API key provided. Send it as 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'."
            )
        scopes = self.keys.scopes_for(presented)
        if scopes is None:
            return Unauthorized("Incorrect API key provided.")
        if needed is not RouteScope.METRICS and needed not in scopes:
            return Forbidden(f"This API key lacks the '{needed}' scope this route needs.")
        return None

"""GET /playground: a page, served by the server itself, that shows what the loaded models do.

The page and its files (`playground_assets/`, shipped as package data) are static: plain HTML,
CSS and JavaScript modules, no build step, nothing from another origin. They are open, like
/health: loading the page needs no key. Everything the page shows comes from the server's own
public API, called by the browser with the key a person types into the page (kept in the tab's
sessionStorage only), so the page can do exactly what that key can do and nothing more.

The Content-Security-Policy lets the page load scripts, styles and images from this origin only
and connect to this origin only: the browser itself refuses any request elsewhere.

The files are read once, when this module is imported; a request names one of them or gets a 404
(a name is looked up in that dict, never joined onto a path).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from embedserve.api.routing import Scope, declare

router = APIRouter(tags=["Playground"])

ASSETS = Path(__file__).with_name("playground_assets")
PAGE = "index.html"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version of the server shows its own page, not a cached one
}


def read_assets(folder: Path = ASSETS) -> dict[str, tuple[bytes, str]]:
    """Every servable file of the folder: name -> (bytes, media type)."""
    found = {}
    for path in sorted(folder.iterdir()):
        media_type = MEDIA_TYPES.get(path.suffix)
        if path.is_file() and media_type is not None:
            found[path.name] = (path.read_bytes(), media_type)
    return found


FILES = read_assets()


def _answer(name: str) -> Response:
    body, media_type = FILES[name]
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/playground", include_in_schema=False, response_class=Response, **declare(Scope.OPEN))
async def playground() -> Response:
    return _answer(PAGE)


@router.get("/playground/{asset}", include_in_schema=False, response_class=Response, **declare(Scope.OPEN, 404))
async def playground_asset(asset: str) -> Response:
    if asset not in FILES or asset == PAGE:
        raise HTTPException(404, "no such playground file")
    return _answer(asset)

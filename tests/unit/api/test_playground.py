"""GET /playground and its files, on the fake backend: served from the package, open like /health,
under a Content-Security-Policy that keeps the page on this origin, and shipped as package data.

The page itself is driven in a real browser by tests/integration/test_playground.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from embedserve.api import playground
from embedserve.api.routing import Scope, route_scope

ROOT = Path(__file__).resolve().parents[3]
ASSETS = playground.ASSETS
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched (createElementNS, xmlns)


def test_the_page_is_served_with_a_policy_that_keeps_it_on_this_origin(client):
    r = client.get("/playground")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == (ASSETS / "index.html").read_bytes()
    policy = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"  # nothing inline, no eval
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="playground/app.js">' in r.text  # relative: works behind a root_path


@pytest.mark.parametrize(("suffix", "media_type"), [
    (".js", "text/javascript; charset=utf-8"), (".css", "text/css; charset=utf-8"), (".svg", "image/svg+xml"),
])
def test_every_file_is_served_with_its_media_type(client, suffix, media_type):
    files = sorted(ASSETS.glob(f"*{suffix}"))
    assert files
    for path in files:
        r = client.get(f"/playground/{path.name}")
        assert r.status_code == 200, path.name
        assert r.headers["content-type"] == media_type
        assert r.content == path.read_bytes()
        assert "connect-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fplayground.py", "%2E%2E", "app.js%00"])
def test_anything_else_is_a_404_in_openai_shape(client, name):
    r = client.get(f"/playground/{name}")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_the_page_and_its_files_need_no_key_but_the_api_still_does(make_client):
    client = make_client(api_keys=("sk-test",))
    assert client.get("/playground").status_code == 200
    assert client.get("/playground/app.js").status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer sk-test"}).status_code == 200


def test_the_routes_are_open_and_left_out_of_the_api_schema(client):
    for route in playground.router.routes:
        assert route_scope(route) is Scope.OPEN, route.path
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/playground")]


def test_no_file_names_another_origin():
    """The policy would block it anyway; this says which file tried."""
    for name in playground.FILES:
        text = (ASSETS / name).read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp):|\"//|'//|`//|url\(|@import", text), name


def test_every_file_the_page_and_its_modules_name_is_served():
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    named = set(re.findall(r'(?:src|href)="playground/([^"]+)"', html))
    for name in [n for n in playground.FILES if n.endswith(".js")]:
        named |= set(re.findall(r'from "\./([^"]+)"', (ASSETS / name).read_text(encoding="utf-8")))
    assert named and named <= set(playground.FILES), named - set(playground.FILES)
    unused = set(playground.FILES) - named - {"index.html"}
    assert not unused, f"files nothing loads: {unused}"


def test_every_file_is_package_data():
    """A non-editable install (a wheel, the Docker image) carries exactly what setuptools' package-data names."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["embedserve"]
    package = ROOT / "src" / "embedserve"
    for path in ASSETS.iterdir():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_unknown_file_kinds_in_the_folder_are_not_served(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html>")
    (tmp_path / "notes.txt").write_text("not a page file")
    (tmp_path / "app.js").write_text("export {};")
    assert sorted(playground.read_assets(tmp_path)) == ["app.js", "index.html"]

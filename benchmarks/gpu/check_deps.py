"""Are the carried wheels' needs, and the project's, met by what this python sees (PYTHONPATH included)?

    python3 .gpu/check_deps.py SITE                 report; exit 1 if a carried wheel's need is unmet
    python3 .gpu/check_deps.py SITE --fallback DIR  print the wheels of DIR to install to meet them

SITE is the --target folder the wheels went to: every distribution there is "carried". Their
Requires-Dist (markers evaluated) must be met; the project's own dependencies (pyproject.toml,
with the dev extras the device run uses) are reported too, for information only: the image's
torch is not the project's pin, and that is expected.
"""

from __future__ import annotations

import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - pip always has it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

DEV_USED = {"pytest", "pytest-asyncio", "httpx", "scipy", "aiohttp"}


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({"extra": ""})


def unmet(requirements: list[Requirement]) -> list[tuple[Requirement, str | None]]:
    out = []
    for req in requirements:
        if not applies(req):
            continue
        version = installed(req.name)
        if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
            out.append((req, version))
    return out


def carried(site: Path) -> dict[str, list[Requirement]]:
    found = {}
    for info in sorted(site.glob("*.dist-info")):
        meta = Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
        found[f"{meta['Name']} {meta['Version']}"] = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    return found


def wheel_requirements(wheel: Path) -> tuple[str, list[Requirement]]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(name).decode("utf-8"))
    return canonicalize_name(meta["Name"]), [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def main(argv: list[str]) -> int:
    site = Path(argv[0])
    dists = carried(site)
    needs = [req for reqs in dists.values() for req in reqs]
    if "--fallback" in argv:
        pool = {}
        for wheel in sorted(Path(argv[argv.index("--fallback") + 1]).glob("*.whl")):
            name, reqs = wheel_requirements(wheel)
            pool[name] = (wheel, reqs)
        chosen: dict[str, Path] = {}
        pending = unmet(needs)
        while pending:
            req, _ = pending.pop()
            name = canonicalize_name(req.name)
            if name in pool and name not in chosen:
                chosen[name] = pool[name][0]
                pending.extend(unmet(pool[name][1]))
        print(" ".join(str(p) for p in chosen.values()))
        return 0

    print(f"check_deps: python {sys.version.split()[0]}; {len(dists)} carried distributions in {site}:")
    print("  " + ", ".join(dists))
    bad = unmet(needs)
    for req, version in bad:
        print(f"check_deps: UNMET carried need {req} (found {version})")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["dev"] if Requirement(r).name in DEV_USED]
    rows = []
    for req in wanted:
        version = installed(req.name)
        mark = "ok" if version and req.specifier.contains(version, prereleases=True) else "DIFFERS"
        rows.append(f"{req.name}=={version} ({mark}: project asks {req.specifier or 'any'})")
    print("check_deps: the project's deps as seen here:\n  " + "\n  ".join(rows))
    print("check_deps:", "carried wheels' needs all met" if not bad else f"{len(bad)} carried needs UNMET")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

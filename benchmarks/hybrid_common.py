"""What benchmarks/hybrid.py's measurements share: the request kinds compared, how embedserve is
started and how it turned out to serve its model, ratios, and number formatting for the tables."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import httpx

from run import HOST, VENV_BIN, Server

ALL_OUTPUTS = ["dense", "sparse", "multivector"]
KINDS = {"dense": ["dense"], "all": ALL_OUTPUTS}  # request kind -> outputs asked (--outputs, --long)
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)


def embedserve_server(name: str, folder: Path, port: int, extra: str, log_dir: Path) -> Server:
    """`embedserve serve` of one model folder, plus the extra serve arguments, as a run.Server."""
    cmd = [str(PYTHON), "-m", "embedserve", "serve", "--host", HOST, "--port", str(port),
           "--model", str(folder), *shlex.split(extra)]
    return Server(name, cmd, port, ["/health", "/ready"], log_dir)


def served_mode(port: int) -> str | None:
    """How the server runs its model ("backend dtype device"), from /metrics' embedserve_model_info."""
    try:
        text = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10, trust_env=False).text
    except httpx.HTTPError:
        return None
    modes = []
    for line in text.splitlines():
        if line.startswith("embedserve_model_info{") and not line.rstrip().endswith(" 0.0"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            modes.append(" ".join(labels.get(k, "?") for k in ("backend", "dtype", "device")))
    return "; ".join(modes) or None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b to 3 decimals; None when either is missing or zero."""
    return round(a / b, 3) if a and b else None


def fmt_number(x: float | None, digits: int = 1) -> str:
    """A table cell: `x` to `digits` decimals, "-" when missing."""
    return "-" if x is None else f"{x:.{digits}f}"

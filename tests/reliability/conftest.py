"""The reliability suite: the real server attacked the way the internet will (docs/reliability.md).

Servers here start with `--backend torch --dtype fp32` unless a test needs another mode: it
loads in seconds (no ONNX export, no load-time bf16 check), and what is tested is the server
around the model, not the model's speed.
"""

from __future__ import annotations

from tests.integration.conftest import (  # noqa: F401 - fixtures and helpers shared with the integration suite
    ServerProcess,
    free_port,
    reference_model,
    start_server,
    stop_server,
)

FAST_START = ("--backend", "torch", "--dtype", "fp32")

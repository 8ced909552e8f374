"""Job-manager helpers for tests: the fake trainer's command, and waiting on a job's status."""

from __future__ import annotations

import sys
import time
from pathlib import Path

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")


def fake_command(mode: str) -> list[str]:
    """The manager's runner command for the fake trainer in `mode` (see fake_trainer.py)."""
    return [sys.executable, str(FAKE_TRAINER), mode]


def wait_for(read, predicate, timeout: float = 20.0):
    """Polls `read()` until `predicate(value)`; the last value (a timeout is an assertion, not a timing test)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not predicate(value):
        assert time.monotonic() < deadline, f"gave up waiting: {value}"
        time.sleep(0.05)
        value = read()
    return value

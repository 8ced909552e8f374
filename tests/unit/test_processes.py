"""The supervisor's restart pacing (processes.py): a process that dies quickly is replaced after a
doubling wait; one that had lived long is replaced at once; the lifetime is taken when the death is
first seen, so waiting never makes a quick death look like a long life."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

from embedserve import processes
from embedserve.processes import RESTART_BACKOFF, STABLE_SECONDS, Supervisor
from embedserve.settings import Settings


def test_quick_deaths_wait_twice_as_long_each_time_and_a_long_life_resets_the_wait(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(processes.time, "monotonic", lambda: clock[0])
    supervisor = Supervisor(Settings(), 1)
    try:
        def died(pid: int, lived: float) -> SimpleNamespace:
            supervisor._started[pid] = clock[0]
            clock[0] += lived
            return SimpleNamespace(pid=pid, name="embedserve-api-0")

        assert supervisor._may_restart(died(1, 1.0))  # the first quick death: replaced at once
        second = died(2, 1.0)
        assert not supervisor._may_restart(second)  # the next waits RESTART_BACKOFF[0]...
        clock[0] += RESTART_BACKOFF[0] + STABLE_SECONDS  # ...however long it then waits,
        assert supervisor._may_restart(second)
        third = died(3, 1.0)  # it was a quick death: the wait doubles
        assert not supervisor._may_restart(third)
        clock[0] += 2 * RESTART_BACKOFF[0] - 0.01
        assert not supervisor._may_restart(third)
        clock[0] += 0.02
        assert supervisor._may_restart(third)
        assert supervisor._may_restart(died(4, STABLE_SECONDS + 1))  # a long life: at once, the wait reset
        assert supervisor._may_restart(died(5, 1.0))
        assert supervisor._due == {} and supervisor._started == {}
    finally:
        shutil.rmtree(supervisor.runtime, ignore_errors=True)

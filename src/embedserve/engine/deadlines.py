"""--request-timeout for a model's queue: fail requests still unanswered at their deadline.

One timer per worker, not one per request: a timer per request (asyncio.timeout) cost the event
loop ~4 us per request, and with a 300 s timeout hundreds of thousands of cancelled timers sat in
its heap. All requests of a worker get the same timeout, so deadlines come in the order requests
do: an insertion-ordered dict holds the unanswered ones (a request leaves it the moment its future
is done), the timer always waits for the first, and a failed future is what the worker already
skips when it plans and runs batches, so the work leaves the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadlines:
    def __init__(self, timeout: float, error: Callable[[], BaseException]):
        self.timeout = timeout  # seconds; 0 = none
        self._error = error
        self._due: dict[asyncio.Future, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def track(self, future: asyncio.Future) -> None:
        if not self.timeout:
            return
        loop = future.get_loop()
        self._due[future] = loop.time() + self.timeout
        future.add_done_callback(self._answered)
        if self._timer is None:
            self._timer = loop.call_at(self._due[future], self._expire)

    def _answered(self, future: asyncio.Future) -> None:
        self._due.pop(future, None)

    def _expire(self) -> None:
        self._timer = None
        while self._due:
            future, due = next(iter(self._due.items()))
            loop = future.get_loop()
            if due > loop.time():
                self._timer = loop.call_at(due, self._expire)
                return
            del self._due[future]
            if not future.done():
                future.set_exception(self._error())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

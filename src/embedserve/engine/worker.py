"""One model's queue and batching worker.

Requests are admitted against a bound (`max_queue`, else Overloaded -> 429) and their
tokenized inputs join one pool per model. A single worker task plans length-sorted batches
over everything waiting (from all callers), runs the most deserving batch on a dedicated
thread, and re-plans whenever new inputs arrived meanwhile. The pool therefore stays full
under load, batches grow with load by themselves, and inputs of similar length from
different callers end up padded together.

Which batch runs next is fair between requests, not first-come-first-served. Each request has
a virtual time, `PendingRequest.due`: when it arrived, plus FAIR_WEIGHT times the engine time its
inputs have used so far (estimated when a batch is sent, corrected when it returns). The batch
holding the request with the earliest virtual time runs first. A request that has had the
engine to itself has a virtual time ahead of the clock, so a sentence arriving behind a
2048-input request waits for the batches already running, not for the whole big request; and
as the big one's virtual time only runs FAIR_WEIGHT times faster than the engine time it gets,
it still gets about 1/FAIR_WEIGHT of the engine while small requests keep arriving.

A failing batch fails only its own callers. A request whose caller went away (client
disconnected) or that passed --request-timeout (engine/deadlines.py) has a done future: its
inputs are skipped when the next batch is planned or run. If the loop itself dies (a fault outside any batch), its waiting
requests fail at once with 503, the worker reports `failure` (/health says error, /ready is
503, new requests get 503) and the loop is restarted after a short back-off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from embedserve.backends.base import Backend, Batch, ModelInfo, Outputs, TokenIds
from embedserve.engine.batcher import plan_batches
from embedserve.engine.deadlines import Deadlines
from embedserve.engine.pending import (
    DENSE,
    Admission,
    PendingInput,
    PendingRequest,
    check_outputs,
    empty_outputs,
    padded_tokens,
)
from embedserve.errors import BackendFailure, NotReady, Overloaded, RequestTimeout
from embedserve.models.tasks import Task

log = logging.getLogger(__name__)

GATHER_WAIT = 0.002  # seconds a free worker waits for requests that are still tokenizing...
GATHER_ENOUGH = 16  # ...unless this many inputs already wait: then the batch is worth running now
RESTART_BACKOFF = (0.5, 30.0)  # seconds before restarting a dead loop: first, and most after doubling
FAIR_WEIGHT = 2.0  # how much faster than the engine time it uses a busy request's virtual time runs


class EngineObserver:
    """Hooks for metrics; the default does nothing."""

    def batch_done(self, model: str, size: int, tokens: int, seconds: float) -> None: ...

    def queue_time(self, model: str, seconds: float) -> None: ...

    def queue_depth(self, model: str, depth: int) -> None: ...

    def tokens(self, model: str, count: int) -> None: ...

    def model_loaded(self, model: str, info: ModelInfo, memory_bytes: int | None) -> None: ...

    def model_unloaded(self, model: str) -> None: ...


class ModelWorker:
    def __init__(
        self,
        name: str,
        backend: Backend,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        observer: EngineObserver | None = None,
        threads: int = 1,
        request_timeout: float = 0.0,
        on_room: Callable[[], None] | None = None,
    ):
        """`on_room`: called (on the event loop) each time an admitted request leaves, freeing a place."""
        self.name = name
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.observer = observer or EngineObserver()
        self._on_room = on_room
        self._pool: list[PendingInput] = []
        self._plan: list[list[PendingInput]] = []  # planned batches not yet started
        self._wake = asyncio.Event()
        self._admitted = 0
        self._arriving = 0  # admitted, inputs not yet in the pool
        self._task: asyncio.Task | None = None
        self._closing = False
        # Inference threads per model (--model-workers), each running its own batch with
        # cores/workers intra-op threads. Two beat one on 2 cores: small batches don't keep
        # two intra-op threads busy, and one batch's Python work overlaps the other's maths.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"infer-{name}")
        self._slots = asyncio.Semaphore(threads)
        self._threads = threads
        self._running: set[asyncio.Task] = set()
        self._token_rate: float | None = None  # padded tokens/s of one batch on one thread, smoothed
        # Supervision of the batching loop (see the module docstring).
        self.failure: BaseException | None = None
        self._backoff = RESTART_BACKOFF[0]
        self._restart: asyncio.TimerHandle | None = None
        self._deadlines = Deadlines(request_timeout, self._timed_out)

    @property
    def depth(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admitted

    @property
    def room(self) -> int | None:
        """Requests the queue can still admit."""
        return max(0, self.max_queue - self._admitted)

    def overloaded(self) -> Overloaded:
        return Overloaded(f"model '{self.name}' has {self._admitted} requests waiting (max {self.max_queue}); retry later")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task) -> None:
        """The loop never returns: if it ended other than by close(), it died. Fail what waits, restart."""
        if self._closing or task.cancelled():
            return
        self.failure = task.exception() or RuntimeError("the batching loop stopped")
        log.error(
            "batching loop of model %s died (%r); failing its %d waiting inputs, restarting in %.1f s",
            self.name, self.failure, self._waiting_items(), self._backoff,
        )
        self._fail_waiting(self._engine_fault())
        self._task = None
        self._restart = asyncio.get_running_loop().call_later(self._backoff, self._restart_loop)
        self._backoff = min(self._backoff * 2, RESTART_BACKOFF[1])

    def _restart_loop(self) -> None:
        self._restart = None
        if not self._closing:
            log.info("restarting the batching loop of model %s", self.name)
            self.start()

    def _engine_fault(self) -> NotReady:
        return NotReady(f"model '{self.name}' had an engine fault and is restarting; retry shortly")

    @contextmanager
    def admit(self) -> Iterator[Admission]:
        """Reserve a queue slot for one request, or refuse at once (no model work done).

        Until the request's inputs reach the pool (it is still tokenizing), the batcher may
        hold a free inference thread for up to GATHER_WAIT so they join the next batch.
        """
        if self._closing:
            raise NotReady(f"model '{self.name}' is shutting down")
        if self.failure is not None:
            raise self._engine_fault()
        if self.room == 0:
            raise self.overloaded()
        self._admitted += 1
        self._arriving += 1
        self.observer.queue_depth(self.name, self._admitted)
        admission = Admission()
        try:
            yield admission
        finally:
            if not admission.submitted:
                self._arriving -= 1
            self._admitted -= 1
            self.observer.queue_depth(self.name, self._admitted)
            if self._on_room is not None:
                self._on_room()

    async def embed(self, sequences: Sequence[TokenIds], admission: Admission | None = None) -> np.ndarray:
        """Pooled (unnormalised) vectors for `sequences`, in order. Call inside `admit()`."""
        return (await self.encode(sequences, admission, DENSE)).dense

    async def encode(
        self,
        sequences: Sequence[TokenIds],
        admission: Admission | None = None,
        tasks: frozenset[Task] = DENSE,
        role: str | None = None,
        types: Sequence[TokenIds] | None = None,
    ) -> Outputs:
        """The outputs in `tasks` for `sequences`, in order. Call inside `admit()`.

        Inputs of requests asking for different outputs share batches: a batch computes the
        union of its requests' tasks from one forward pass.
        """
        if admission is not None and not admission.submitted:
            admission.submitted = True
            self._arriving -= 1
        loop = asyncio.get_running_loop()
        request = PendingRequest(
            outputs=empty_outputs(tasks, len(sequences), self.backend.info),
            tasks=tasks,
            future=loop.create_future(),
            remaining=len(sequences),
            role=role,
        )
        self._deadlines.track(request.future)
        segments = types if types is not None else [None] * len(sequences)
        self._pool.extend(
            PendingInput(request, i, ids, kinds) for i, (ids, kinds) in enumerate(zip(sequences, segments, strict=True))
        )
        self._wake.set()
        return await request.future

    def _timed_out(self) -> RequestTimeout:
        return RequestTimeout(
            f"the request did not complete within {self._deadlines.timeout:g} s (--request-timeout); "
            f"model '{self.name}' is busy, retry later"
        )

    async def _loop(self) -> None:
        plan = self._plan
        alive_since = time.monotonic()
        while True:
            if not self._pool and not plan:
                self._recovered(alive_since)
                await self._wake.wait()
            self._wake.clear()
            # Wait for a free inference thread first: whatever arrives meanwhile joins the plan.
            await self._slots.acquire()
            try:
                await self._gather_arrivals()
                batch = self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            if batch is None:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._guarded(batch, self._charge(batch)))
            self._running.add(task)
            task.add_done_callback(self._batch_finished)

    def _next_batch(self) -> list[PendingInput] | None:
        """Re-plan with any new arrivals, then take the batch owed the engine most (None: nothing waits)."""
        plan = self._plan
        if self._pool:
            # New arrivals: re-plan everything still waiting, so they can share batches
            # (and padding lengths) with what was already queued.
            waiting = [item for batch in plan for item in batch] + self._pool
            plan[:] = plan_batches(
                [i for i in waiting if not i.request.future.done()],
                max_tokens=self.max_batch_tokens,
                max_size=self.max_batch_size,
                overhead=self.backend.batch_overhead_tokens,
            )
            self._pool = []  # only once planned: if planning raised, the loop's death fails them all
        if not plan:
            return None
        return plan.pop(self._most_owed(plan))

    async def _gather_arrivals(self) -> None:
        """Give admitted requests that are still tokenizing a moment to join this batch.

        Only waits when such requests exist and few inputs wait, so an idle server answers a
        lone request at once and bulk load never idles the cores. Only requests tokenized in
        a thread are ever seen "arriving": small ones (engine/service.py) are tokenized and
        submitted on the event loop without yielding in between.
        """
        deadline = time.perf_counter() + GATHER_WAIT
        while self._arriving > 0 and self._waiting_items() < GATHER_ENOUGH:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return

    @staticmethod
    def _most_owed(plan: list[list[PendingInput]]) -> int:
        """The batch holding the request with the earliest virtual time (see the module docstring)."""
        return min(range(len(plan)), key=lambda k: min(item.request.due for item in plan[k]))

    def _charge(self, batch: list[PendingInput]) -> float:
        """Advance each request's virtual time by its share of the engine time this batch is
        expected to take; returns the estimate, corrected by `_settle` once the batch is timed."""
        estimate = padded_tokens(batch) / self._token_rate if self._token_rate else 0.0
        self._settle(batch, estimate)
        return estimate

    def _settle(self, batch: list[PendingInput], seconds: float) -> None:
        # One batch holds one of the engine's threads: each input's share is seconds / (threads * inputs).
        share = FAIR_WEIGHT * seconds / (self._threads * len(batch))
        for item in batch:
            item.request.due += share

    def _recovered(self, alive_since: float) -> None:
        """The loop reached idle: a restarted one is healthy again; a long healthy run resets the back-off."""
        if self.failure is not None:
            log.info("batching loop of model %s is serving again", self.name)
            self.failure = None
        if time.monotonic() - alive_since > 60:
            self._backoff = RESTART_BACKOFF[0]

    def _waiting_items(self) -> int:
        return len(self._pool) + sum(len(batch) for batch in self._plan)

    def _batch_finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _guarded(self, batch: list[PendingInput], estimate: float) -> None:
        try:
            await self._run_batch(batch, estimate)
        except asyncio.CancelledError:
            self._fail(batch, NotReady(f"model '{self.name}' was unloaded"))
            raise
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.exception("batch failed for model %s", self.name)
            self._fail(batch, BackendFailure(f"inference failed: {exc}"))

    async def _run_batch(self, planned: list[PendingInput], estimate: float) -> None:
        batch = [item for item in planned if not item.request.future.done()]
        if not batch:
            self._settle(planned, -estimate)
            return
        started = time.perf_counter()
        requests = {item.request for item in batch}
        for request in requests:
            if not request.started:
                request.started = True
                self.observer.queue_time(self.name, started - request.enqueued)
        loop = asyncio.get_running_loop()
        tasks = next(iter(requests)).tasks if len(requests) == 1 else frozenset().union(*(r.tasks for r in requests))
        try:
            roles = [item.request.role for item in batch] if self.backend.uses_roles else None
            types = [item.types for item in batch] if Task.SCORE in tasks else None
            outputs = await loop.run_in_executor(self._executor, self._infer, [i.ids for i in batch], tasks, roles, types)
        except Exception as exc:  # noqa: BLE001 - a backend fault fails this batch only
            log.error("inference failed for model %s (batch of %d): %r", self.name, len(batch), exc)
            self._fail(batch, BackendFailure(f"inference failed for model '{self.name}': {exc}"))
            return
        seconds = time.perf_counter() - started
        self.observer.batch_done(self.name, len(batch), sum(len(i) for i in batch), seconds)
        self._settle(planned, seconds - estimate)
        if seconds > 0:
            rate = padded_tokens(batch) / seconds
            self._token_rate = rate if self._token_rate is None else 0.8 * self._token_rate + 0.2 * rate
        for row, item in enumerate(batch):
            request = item.request
            if request.future.done():
                continue
            request.store(item.index, outputs, row)
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.outputs)

    def _infer(
        self, sequences: list[TokenIds], tasks: frozenset[Task], roles: list[str | None] | None = None,
        types: list[TokenIds | None] | None = None,
    ) -> Outputs:
        if types is not None and any(t is None for t in types):
            types = None  # a scorer's inputs all come as pairs; anything else has no segments
        batch = Batch.from_ids(sequences, pad_id=self.backend.pad_id, type_ids=types, roles=roles)
        outputs = self.backend.encode(batch, tasks)
        check_outputs(outputs, len(sequences), tasks)
        return outputs

    def _fail_waiting(self, error: Exception) -> None:
        """Fail every input not yet sent to a thread (new arrivals and the plan), and forget them."""
        self._fail(self._pool + [item for batch in self._plan for item in batch], error)
        self._pool, self._plan[:] = [], []

    @staticmethod
    def _fail(items: Sequence[PendingInput], error: Exception) -> None:
        for item in items:
            if not item.request.future.done():
                item.request.future.set_exception(error)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop admitting, let admitted requests finish (up to `timeout`), then stop."""
        self._closing = True
        self._deadlines.close()
        if self._restart is not None:
            self._restart.cancel()
        deadline = time.monotonic() + timeout
        while self._admitted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        unloaded = NotReady(f"model '{self.name}' was unloaded")
        for task in list(self._running):
            task.cancel()
        self._fail_waiting(unloaded)
        self._executor.shutdown(wait=False, cancel_futures=True)

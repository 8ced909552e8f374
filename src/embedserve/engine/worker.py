"""One model's queue and batching worker.

Requests are admitted against a bound (`max_queue`, else Overloaded -> 429) and their
tokenized inputs join one pool per model. A single worker task plans length-sorted batches
over everything waiting (from all callers), runs the batch holding the oldest request on a
dedicated thread, and re-plans whenever new inputs arrived meanwhile. The pool therefore
stays full under load, batches grow with load by themselves, and inputs of similar length
from different callers end up padded together. A failing batch fails only its own callers;
the loop itself never dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from embedserve.backends.base import Backend, Batch, ModelInfo, TokenIds
from embedserve.engine.batcher import plan_batches
from embedserve.errors import BackendFailure, NotReady, Overloaded

log = logging.getLogger(__name__)

GATHER_WAIT = 0.002  # seconds a free worker waits for requests that are still tokenizing...
GATHER_ENOUGH = 16  # ...unless this many inputs already wait: then the batch is worth running now


class EngineObserver:
    """Hooks for metrics; the default does nothing."""

    def batch_done(self, model: str, size: int, tokens: int, seconds: float) -> None: ...

    def queue_time(self, model: str, seconds: float) -> None: ...

    def queue_depth(self, model: str, depth: int) -> None: ...

    def tokens(self, model: str, count: int) -> None: ...

    def model_loaded(self, model: str, info: ModelInfo, memory_bytes: int | None) -> None: ...

    def model_unloaded(self, model: str) -> None: ...


@dataclass(eq=False)
class _Request:
    vectors: np.ndarray
    future: asyncio.Future
    remaining: int
    enqueued: float = field(default_factory=time.perf_counter)
    started: bool = False


@dataclass(eq=False)
class Admission:
    """One admitted request; `submitted` once its inputs reached the pool."""

    submitted: bool = False


@dataclass(eq=False)
class _Item:
    request: _Request
    index: int
    ids: TokenIds

    def __len__(self) -> int:
        return len(self.ids)


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
    ):
        self.name = name
        self.backend = backend
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.observer = observer or EngineObserver()
        self._pool: list[_Item] = []
        self._plan: list[list[_Item]] = []  # planned batches not yet started
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
        self._running: set[asyncio.Task] = set()

    @property
    def depth(self) -> int:
        """Requests admitted and not yet answered."""
        return self._admitted

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    @contextmanager
    def admit(self) -> Iterator[Admission]:
        """Reserve a queue slot for one request, or refuse at once (no model work done).

        Until the request's inputs reach the pool (it is still tokenizing), the batcher may
        hold a free inference thread for up to GATHER_WAIT so they join the next batch.
        """
        if self._closing:
            raise NotReady(f"model '{self.name}' is shutting down")
        if self._admitted >= self.max_queue:
            raise Overloaded(
                f"model '{self.name}' has {self._admitted} requests waiting (max {self.max_queue}); retry later"
            )
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

    async def embed(self, sequences: Sequence[TokenIds], admission: Admission | None = None) -> np.ndarray:
        """Pooled (unnormalised) vectors for `sequences`, in order. Call inside `admit()`."""
        if admission is not None and not admission.submitted:
            admission.submitted = True
            self._arriving -= 1
        loop = asyncio.get_running_loop()
        request = _Request(
            vectors=np.empty((len(sequences), self.backend.info.dimension), dtype=np.float32),
            future=loop.create_future(),
            remaining=len(sequences),
        )
        self._pool.extend(_Item(request, i, ids) for i, ids in enumerate(sequences))
        self._wake.set()
        return await request.future

    async def _loop(self) -> None:
        plan = self._plan
        while True:
            if not self._pool and not plan:
                await self._wake.wait()
            self._wake.clear()
            # Wait for a free inference thread first: whatever arrives meanwhile joins the plan.
            await self._slots.acquire()
            await self._gather_arrivals()
            if self._pool:
                # New arrivals: re-plan everything still waiting, so they can share batches
                # (and padding lengths) with what was already queued.
                waiting = [item for batch in plan for item in batch] + self._pool
                self._pool = []
                plan[:] = plan_batches(
                    [i for i in waiting if not i.request.future.done()],
                    max_tokens=self.max_batch_tokens,
                    max_size=self.max_batch_size,
                    overhead=self.backend.batch_overhead_tokens,
                )
            if not plan:
                self._slots.release()
                continue
            # Oldest request first, so a steady stream of short inputs can't starve a long one.
            oldest = min(range(len(plan)), key=lambda k: min(i.request.enqueued for i in plan[k]))
            batch = plan.pop(oldest)
            task = asyncio.get_running_loop().create_task(self._guarded(batch))
            self._running.add(task)
            task.add_done_callback(self._batch_finished)

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

    def _waiting_items(self) -> int:
        return len(self._pool) + sum(len(batch) for batch in self._plan)

    def _batch_finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._slots.release()

    async def _guarded(self, batch: list[_Item]) -> None:
        try:
            await self._run_batch(batch)
        except asyncio.CancelledError:
            self._fail(batch, NotReady(f"model '{self.name}' was unloaded"))
            raise
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.exception("batch failed for model %s", self.name)
            self._fail(batch, BackendFailure(f"inference failed: {exc}"))

    async def _run_batch(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item.request.future.done()]
        if not batch:
            return
        started = time.perf_counter()
        for request in {item.request for item in batch}:
            if not request.started:
                request.started = True
                self.observer.queue_time(self.name, started - request.enqueued)
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self._infer, [i.ids for i in batch])
        except Exception as exc:  # noqa: BLE001 - a backend fault fails this batch only
            log.error("inference failed for model %s (batch of %d): %r", self.name, len(batch), exc)
            self._fail(batch, BackendFailure(f"inference failed for model '{self.name}': {exc}"))
            return
        self.observer.batch_done(self.name, len(batch), sum(len(i) for i in batch), time.perf_counter() - started)
        for item, vector in zip(batch, vectors, strict=True):
            request = item.request
            if request.future.done():
                continue
            request.vectors[item.index] = vector
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(request.vectors)

    def _infer(self, sequences: list[TokenIds]) -> np.ndarray:
        vectors = self.backend.embed(Batch.from_ids(sequences, pad_id=self.backend.pad_id))
        if vectors.shape[0] != len(sequences):
            raise RuntimeError(f"backend returned {vectors.shape[0]} vectors for {len(sequences)} inputs")
        return vectors

    @staticmethod
    def _fail(items: Sequence[_Item], error: Exception) -> None:
        for item in items:
            if not item.request.future.done():
                item.request.future.set_exception(error)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop admitting, let admitted requests finish (up to `timeout`), then stop."""
        self._closing = True
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
        self._fail(self._pool + [item for batch in self._plan for item in batch], unloaded)
        self._pool, self._plan[:] = [], []
        self._executor.shutdown(wait=False, cancel_futures=True)

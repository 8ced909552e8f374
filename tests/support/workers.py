"""A started ModelWorker on a fake backend, and one admitted call to it, as the engine tests use them."""

from __future__ import annotations

from embedserve.backends.fake import FakeBackend
from embedserve.engine.worker import ModelWorker


def make_worker(backend: FakeBackend, **kw) -> ModelWorker:
    params = {"max_batch_tokens": 10_000, "max_batch_size": 16, "max_queue": 1000} | kw
    worker = ModelWorker("m", backend, **params)
    worker.start()
    return worker


async def call(worker: ModelWorker, seqs):
    """Admit one request and embed `seqs`, as the service does."""
    with worker.admit() as admission:
        return await worker.embed(seqs, admission)

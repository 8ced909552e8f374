"""One batch, several outputs: requests wanting different outputs of one model share forward passes."""

from __future__ import annotations

import asyncio

import numpy as np

from embedserve.backends.fake import FakeBackend
from embedserve.models.tasks import Task
from tests.support.workers import make_worker

DENSE = frozenset({Task.EMBED})
SPARSE = frozenset({Task.SPARSE})
HYBRID = frozenset({Task.EMBED, Task.SPARSE, Task.MULTIVECTOR})


async def encode(worker, seqs, tasks):
    with worker.admit() as admission:
        return await worker.encode(seqs, admission, tasks)


async def test_requests_for_different_outputs_share_one_forward_pass_and_get_only_theirs():
    backend = FakeBackend(tasks=HYBRID, delay=0.02)
    worker = make_worker(backend, max_batch_size=64)
    blocker = asyncio.ensure_future(encode(worker, [[1, 3, 2]], DENSE))  # holds the engine while the rest queue up
    await asyncio.sleep(0.005)
    asks = [(DENSE, [[1, 5, 6, 2]]), (SPARSE, [[1, 7, 7, 8, 2], [1, 9, 2]]), (HYBRID, [[1, 5, 6, 2], [1, 4, 2]])]
    results = await asyncio.gather(*(encode(worker, seqs, tasks) for tasks, seqs in asks))
    await blocker
    assert len(backend.batches) == 2  # the blocker's, then one for all three requests
    assert backend.batch_tasks[1] == HYBRID  # the union of what the batch's requests asked
    for (tasks, seqs), out in zip(asks, results, strict=True):
        assert (out.dense is not None, out.sparse is not None, out.multivector is not None) == (
            Task.EMBED in tasks, Task.SPARSE in tasks, Task.MULTIVECTOR in tasks)
        for i, ids in enumerate(seqs):  # each input's own outputs, whatever row it had in the batch
            if out.dense is not None:
                assert np.array_equal(out.dense[i], backend.vector_for(ids))
            if out.sparse is not None:
                assert out.sparse[i].indices.tolist() == backend.sparse_for(ids).indices.tolist()
            if out.multivector is not None:
                assert out.multivector[i].shape == (len(ids) - 1, 4)  # no padding rows, no CLS
                assert np.array_equal(out.multivector[i], backend.multivector_for(ids))


async def test_a_dense_only_batch_computes_no_other_output():
    backend = FakeBackend(tasks=HYBRID)
    worker = make_worker(backend)
    out = await encode(worker, [[1, 5, 2]], DENSE)
    assert backend.batch_tasks == [DENSE] and out.sparse is None and out.multivector is None

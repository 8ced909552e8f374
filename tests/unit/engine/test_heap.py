"""A loaded model's objects leave the cyclic collector's view; an unload gives them back."""

from __future__ import annotations

import gc

from tests.unit.engine.test_model_pool import make_pool


async def test_a_load_freezes_the_heap_and_an_unload_unfreezes_it():
    gc.unfreeze()
    pool, _, _ = make_pool()
    model = await pool.load("org/a")
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the interpreter's, the test's and the model's objects: no full collection walks them
    garbage = [[]]
    garbage[0].append(garbage)  # a cycle made after the load is still collected
    del garbage
    assert gc.collect() >= 1
    await pool.unload(model.id)
    assert gc.get_freeze_count() == 0
    await pool.close()

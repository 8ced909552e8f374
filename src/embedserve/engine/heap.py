"""The cyclic garbage collector and a server's long-lived heap.

A loaded server holds some 450-650 thousand objects the collector tracks (torch's and
transformers' import-time objects, each model's modules and tokenizer), all alive for as long
as the model is. Every full collection walks them all: 0.2-0.5 s with the event loop stopped,
11-22% of the CPU under single-sentence traffic (benchmarks/host_cost.py, docs/benchmarks.md).
Once a model is in, those objects are moved out of the collector's view (`gc.freeze`); the
objects requests make are collected as before. Freezing does not keep anything alive:
reference counting still frees what is dropped. Only garbage in reference cycles among frozen
objects would stay, so an unload unfreezes everything (engine/model_pool.py): the unloaded
model's cycles go in the next full collection, and the next load freezes what is left.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


def freeze_long_lived() -> None:
    """Collect once, then keep everything alive now out of future collections."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.debug("heap frozen: %d objects, %.3f s", gc.get_freeze_count(), time.perf_counter() - started)

"""A deterministic backend for fast tests: no weights, records batches, injects faults.

Vectors depend only on an input's token ids, so a test can tell whether each caller got its
own vector back, whatever batch it was computed in.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from embedserve.backends.base import Backend, Batch, ModelInfo, TokenIds

CLS, SEP, PAD = 1, 2, 0


class InjectedFault(RuntimeError):
    pass


class FakeBackend(Backend):
    def __init__(
        self,
        *,
        dimension: int = 8,
        max_seq_length: int = 16,
        vocab_size: int = 1000,
        normalize: bool = True,
        delay: float = 0.0,
        prompts: dict[str, str] | None = None,
    ):
        self.info = ModelInfo(
            dimension=dimension,
            max_seq_length=max_seq_length,
            pooling="mean",
            normalize=normalize,
            vocab_size=vocab_size,
            device="cpu",
            backend="fake",
            prompts=prompts or {},
        )
        self.pad_id = PAD
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.batches: list[list[TokenIds]] = []  # the token ids of every batch run, in order
        self.fail_when: Callable[[Batch], bool] | None = None
        self.kill_loop = False  # set: the next time the batching loop plans, it dies (a fault outside any batch)
        self._overhead = Backend.batch_overhead_tokens
        self._lock = threading.Lock()

    @property
    def batch_overhead_tokens(self) -> int:
        """Read by the worker's loop whenever it plans batches: where a test injects a loop fault."""
        if self.kill_loop:
            self.kill_loop = False
            raise InjectedFault("injected fault in the batching loop")
        return self._overhead

    @batch_overhead_tokens.setter
    def batch_overhead_tokens(self, value: int) -> None:
        self._overhead = value

    def _word_id(self, word: str) -> int:
        return 3 + zlib.crc32(word.encode()) % (self.info.vocab_size - 3)

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        return self.wrap_ids([[self._word_id(w) for w in t.split()] for t in texts], truncate=truncate)

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        room = self.info.max_seq_length - 2
        return [[CLS, *(seq[:room] if truncate else seq), SEP] for seq in ids]

    def forward(self, batch: Batch) -> np.ndarray:
        with self._lock:
            self.batch_sizes.append(batch.size)
            self.batches.append([row[mask == 1].tolist() for row, mask in zip(batch.input_ids, batch.attention_mask)])
        if self.delay:
            time.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(batch):
            raise InjectedFault("injected backend fault")
        return batch.input_ids

    def pool(self, batch: Batch, hidden: np.ndarray) -> np.ndarray:
        out = np.empty((batch.size, self.info.dimension), dtype=np.float32)
        for row in range(batch.size):
            ids = hidden[row][batch.attention_mask[row] == 1]
            out[row] = self.vector_for(ids.tolist())
        return out

    def vector_for(self, ids: TokenIds) -> np.ndarray:
        """The (unnormalised) vector any batch gives for these token ids."""
        seed = zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())
        return np.random.default_rng(seed).standard_normal(self.info.dimension).astype(np.float32) + 0.5

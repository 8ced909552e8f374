"""The one small interface every inference backend implements: tokenize, forward, pool.

The engine only ever sees token-id lists and float32 numpy arrays, so a backend can be torch,
ONNX Runtime or a test fake without the engine or the API knowing which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

TokenIds = list[int]


@dataclass(frozen=True)
class Fidelity:
    """How close a fast mode's vectors are to the fp32 reference (see backends.fidelity)."""

    mode: str  # e.g. "onnx fp32"
    reference: str  # e.g. "torch fp32"
    mean_cosine: float
    min_cosine: float
    samples: int

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "reference": self.reference,
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
            "samples": self.samples,
        }


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is, read from its own configuration."""

    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    vocab_size: int
    device: str
    backend: str
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dtype: str = "fp32"
    fidelity: Fidelity | None = None
    weights_bytes: int | None = None  # the one copy of the weights this backend holds
    speedup: float | None = None  # this mode's speed over fp32 on the calibration set, measured at load


@dataclass(frozen=True)
class Batch:
    """Token ids of several inputs, padded to the longest of them (not to the model maximum)."""

    input_ids: np.ndarray  # int64 [batch, length]
    attention_mask: np.ndarray  # int64 [batch, length]

    @classmethod
    def from_ids(cls, sequences: Sequence[TokenIds], pad_id: int = 0) -> Batch:
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        return cls(ids, mask)

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


class Backend(ABC):
    """A loaded model. Methods are called from worker threads, never on the event loop."""

    info: ModelInfo
    pad_id: int = 0
    # What one more batch costs, in tokens' worth of compute: the batch planner weighs it
    # against padding (engine/batcher.py). Eager torch pays Python per layer for every batch.
    batch_overhead_tokens: int = 64

    @abstractmethod
    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        """Token ids with special tokens; cut to `info.max_seq_length` when `truncate`."""

    @abstractmethod
    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        """Add special tokens to raw vocabulary ids (for token-id inputs)."""

    @abstractmethod
    def forward(self, batch: Batch) -> Any:
        """Run the network: token embeddings (backend-specific type)."""

    @abstractmethod
    def pool(self, batch: Batch, hidden: Any) -> np.ndarray:
        """Pool token embeddings to one float32 vector per input, *not* normalised."""

    def embed(self, batch: Batch) -> np.ndarray:
        return self.pool(batch, self.forward(batch))

    def limit_sequence_length(self, max_seq_length: int) -> None:
        """Serve at most `max_seq_length` tokens (a family default the model didn't declare)."""
        self.info = replace(self.info, max_seq_length=max_seq_length)

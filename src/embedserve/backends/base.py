"""The one small interface every inference backend implements: tokenize, forward, heads.

`forward` turns a padded batch of token ids into token states (the backend's own type); `heads`
turns those into the outputs asked for, one forward pass serving every task of the batch:
`pool` gives the dense vector, and a model with more tasks adds sparse term weights and
per-token vectors (backends/heads.py). The engine only ever sees token-id lists, float32 numpy
arrays and `Outputs`, so a backend can be torch, ONNX Runtime or a test fake without the engine
or the API knowing which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from embedserve.models.tasks import Task

TokenIds = list[int]


@dataclass(frozen=True)
class SparseVector:
    """One input's non-zero term weights: vocabulary ids ascending, each with its weight (> 0)."""

    indices: np.ndarray  # int64 [k]
    values: np.ndarray  # float32 [k]

    @classmethod
    def from_dense(cls, row: np.ndarray) -> SparseVector:
        """The non-zero entries of one vocabulary-sized row."""
        indices = np.flatnonzero(row > 0)
        return cls(indices.astype(np.int64, copy=False), row[indices].astype(np.float32, copy=False))


@dataclass
class Outputs:
    """Per-input outputs of a batch or a request, for the tasks asked (None: not asked)."""

    dense: np.ndarray | None = None  # float32 [n, dimension], not normalised
    sparse: list[SparseVector] | None = None
    multivector: list[np.ndarray] | None = None  # float32 [tokens_i, dim] per input, no padding rows
    scores: np.ndarray | None = None  # float32 [n, labels]: a cross-encoder's raw logits per (query, document) pair


@dataclass(frozen=True)
class Fidelity:
    """How close a fast mode's vectors are to the fp32 reference (see backends.fidelity).

    A cross-encoder's is measured on scores (backends.score_fidelity): its mean/min "cosine" is its
    mean/min per-query rank agreement (Spearman: the cosine of the centred rank vectors), and
    `outputs` holds its score measures."""

    mode: str  # e.g. "onnx fp32"
    reference: str  # e.g. "torch fp32"
    mean_cosine: float
    min_cosine: float
    samples: int
    # sparse / multi-vector measures (fidelity.compare_outputs), or a cross-encoder's (score_fidelity.compare_scores)
    outputs: Mapping[str, float] = field(default_factory=dict)

    @property
    def lowest_mean_cosine(self) -> float:
        """What the guard holds against --min-fidelity: the lowest mean cosine of any output."""
        others = [v for k, v in self.outputs.items() if k.endswith("_mean_cosine")]
        return min([self.mean_cosine, *others])

    @property
    def lowest_min_cosine(self) -> float:
        """The worst single output of any kind (what auto asks of bf16)."""
        others = [v for k, v in self.outputs.items() if k.endswith("_min_cosine")]
        return min([self.min_cosine, *others])

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "reference": self.reference,
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
            "samples": self.samples,
            "outputs": {k: round(v, 6) for k, v in self.outputs.items()},
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
    shared_weights_bytes: int = 0  # of weights_bytes, held once with other loaded models (LoRA adapters' base)
    compiled: bool = False  # the encoder runs torch.compile'd (backends/compiled.py)
    compile_speedup: float | None = None  # compiled over eager on the calibration set, where it was tried
    cuda_graphs: bool = False  # the encoder replays CUDA graphs for batches that fit a bucket (backends/cuda_graphs.py)
    cuda_graphs_speedup: float | None = None  # graphs over eager on the calibration set, where they were measured
    tasks: frozenset[Task] = frozenset({Task.EMBED})
    kind: str = "sentence-transformer"  # models/tasks.py ModelKind.name
    multivector_dimension: int | None = None
    score_labels: int | None = None  # a cross-encoder's scores per pair
    labels: tuple[str, ...] = ()  # a cross-encoder's label names in id order (config id2label); () = unnamed
    multivector_similarity: str | None = None  # "maxsim" (sum over query vectors) or "meanmaxsim" (their mean)


@dataclass(frozen=True)
class Token:
    """One token of a text as the tokenizer sees it (TEI's /tokenize): `start`/`stop` are character
    offsets into the text, None for special tokens, whose `text` is the token itself."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


@dataclass(frozen=True)
class Batch:
    """Token ids of several inputs, padded to the longest of them (not to the model maximum)."""

    input_ids: np.ndarray  # int64 [batch, length]
    attention_mask: np.ndarray  # int64 [batch, length]
    token_type_ids: np.ndarray | None = None  # int64 [batch, length]: segment ids (a cross-encoder's pair); None: all 0
    roles: Sequence[str | None] | None = None  # per row, "query" / "document" for models that encode them apart

    @classmethod
    def from_ids(
        cls,
        sequences: Sequence[TokenIds],
        pad_id: int = 0,
        type_ids: Sequence[TokenIds] | None = None,
        roles: Sequence[str | None] | None = None,
    ) -> Batch:
        length = max(len(s) for s in sequences)
        ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.int64)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        types = None
        if type_ids is not None:
            types = np.zeros_like(ids)
            for row, seq in enumerate(type_ids):
                types[row, : len(seq)] = seq
        return cls(ids, mask, types, roles)

    def segment_ids(self) -> np.ndarray:
        return self.token_type_ids if self.token_type_ids is not None else np.zeros_like(self.input_ids)

    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

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

    # A model that encodes queries and documents apart (multi-vector: lengths, query expansion)
    # tokenizes by role, and its batches carry each row's role.
    uses_roles: bool = False

    def tokenize_role(self, texts: Sequence[str], *, truncate: bool, role: str) -> list[TokenIds]:
        return self.tokenize(texts, truncate=truncate)

    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str]], *, truncate: bool
    ) -> tuple[list[TokenIds], list[TokenIds] | None]:
        """Token ids of (query, document) pairs for a model that scores pairs, and their segment ids
        (None when the model takes none); when cut, only the document is cut."""
        raise NotImplementedError

    def activate_scores(self, logits: np.ndarray) -> np.ndarray:
        """The model's own activation of its raw scores (a cross-encoder's sigmoid, say)."""
        return logits

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

    def encode(self, batch: Batch, tasks: frozenset[Task]) -> Outputs:
        """Every output in `tasks` for the batch, from one forward pass."""
        return self.heads(batch, self.forward(batch), tasks)

    def heads(self, batch: Batch, hidden: Any, tasks: frozenset[Task]) -> Outputs:
        """Turn token states into the outputs asked for. A dense embedder only has `pool`;
        backends of models with more tasks override this."""
        return Outputs(dense=self.pool(batch, hidden))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """The text of each vocabulary id (a sparse output's terms, for people to read)."""
        raise NotImplementedError

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text, untruncated, with its offsets (for people and clients to inspect)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[TokenIds], *, skip_special_tokens: bool) -> list[str]:
        """The text of each id sequence, as the model's tokenizer decodes it."""
        raise NotImplementedError

    def limit_sequence_length(self, max_seq_length: int) -> None:
        """Serve at most `max_seq_length` tokens (a family default the model didn't declare)."""
        self.info = replace(self.info, max_seq_length=max_seq_length)

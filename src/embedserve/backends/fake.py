"""A deterministic backend for fast tests: no weights, records batches, injects faults.

Vectors depend only on an input's token ids, so a test can tell whether each caller got its
own vector back, whatever batch it was computed in. Given more tasks than `embed`, it also
gives sparse term weights and per-token vectors that depend only on the token ids
(`sparse_for`, `multivector_for`), and records which tasks every batch computed.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from embedserve.backends.base import Backend, Batch, ModelInfo, Outputs, SparseVector, Token, TokenIds
from embedserve.backends.heads import l2_normalize, max_per_id
from embedserve.models.tasks import Task

CLS, SEP, PAD = 1, 2, 0
_SPECIAL_IDS = {"[CLS]": CLS, "[SEP]": SEP, "[PAD]": PAD}


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
        tasks: frozenset[Task] = frozenset({Task.EMBED}),
        multivector_dimension: int = 4,
        labels: Sequence[str] = (),
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
            tasks=tasks,
            kind="fake",
            multivector_dimension=multivector_dimension if Task.MULTIVECTOR in tasks else None,
            score_labels=(len(labels) or 1) if Task.SCORE in tasks else None,
            labels=tuple(labels),
            multivector_similarity="maxsim" if Task.MULTIVECTOR in tasks else None,
        )
        self.pad_id = PAD
        self.batch_tasks: list[frozenset[Task]] = []  # the tasks every batch computed, in order
        self.batch_types: list[list[TokenIds] | None] = []  # every batch's segment ids (None: it had none)
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
        """A word's id from its hash; `t<id>` and `[CLS]`/`[SEP]`/`[PAD]` (how `decode` spells ids) are
        those ids, so the fake's own ids decode and re-encode to themselves, as a real tokenizer's do."""
        if word.startswith("t") and word[1:].isdigit() and 3 <= int(word[1:]) < self.info.vocab_size:
            return int(word[1:])
        if word in _SPECIAL_IDS:
            return _SPECIAL_IDS[word]
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

    def encode(self, batch: Batch, tasks: frozenset[Task]) -> Outputs:
        with self._lock:
            self.batch_tasks.append(tasks)
            types = batch.token_type_ids
            self.batch_types.append(
                None if types is None else [row[mask == 1].tolist() for row, mask in zip(types, batch.attention_mask)]
            )
        return super().encode(batch, tasks)

    def heads(self, batch: Batch, hidden: np.ndarray, tasks: frozenset[Task]) -> Outputs:
        out = Outputs()
        if Task.EMBED in tasks:
            out.dense = self.pool(batch, hidden)
        rows = [hidden[row][batch.attention_mask[row] == 1].tolist() for row in range(batch.size)]
        if Task.SPARSE in tasks:
            out.sparse = [self.sparse_for(ids) for ids in rows]
        if Task.MULTIVECTOR in tasks:
            out.multivector = [self.multivector_for(ids) for ids in rows]
        if Task.SCORE in tasks:
            labels = self.info.score_labels or 1
            out.scores = np.array([self.vector_for(ids)[:labels] for ids in rows], dtype=np.float32)
        return out

    def tokenize_pairs(self, pairs, *, truncate: bool):
        """[CLS] query [SEP] document [SEP], segment 0 then 1 (documents cut to fit, never queries)."""
        ids, types = [], []
        for query, document in pairs:
            q = self.wrap_ids([[self._word_id(w) for w in query.split()]], truncate=truncate)[0]
            d = [self._word_id(w) for w in document.split()]
            if truncate:
                d = d[: max(0, self.info.max_seq_length - len(q) - 1)]
            ids.append([*q, *d, SEP])
            types.append([0] * len(q) + [1] * (len(d) + 1))
        return ids, types

    def score_for(self, ids: TokenIds) -> float:
        """A raw score from a pair's token ids alone (the first label's, with several)."""
        return float(self.vector_for(ids)[0])

    def scores_for(self, ids: TokenIds) -> np.ndarray:
        """Every label's raw score from a sequence's token ids alone."""
        return self.vector_for(ids)[: self.info.score_labels or 1]

    def activate_scores(self, logits: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-logits))

    def sparse_for(self, ids: TokenIds) -> SparseVector:
        """Weights in [0, 1) from each id alone (some 0: dropped), the largest per id; CLS/SEP/PAD dropped."""
        weights = np.array([(i * 7919 % 10) / 10 for i in ids], dtype=np.float32)
        return max_per_id(np.asarray(ids, dtype=np.int64), weights, np.array([PAD, CLS, SEP]))

    def multivector_for(self, ids: TokenIds) -> np.ndarray:
        """One unit vector per token after CLS, from that token's id alone."""
        dim = self.info.multivector_dimension or 4
        vectors = [np.random.default_rng(int(i)).standard_normal(dim) for i in ids[1:]]
        return l2_normalize(np.asarray(vectors, dtype=np.float32).reshape(-1, dim))

    def token_texts(self, ids) -> list[str]:
        return [f"t{int(i)}" for i in ids]

    def tokens(self, texts, *, add_special_tokens: bool) -> list[list[Token]]:
        """One token per whitespace-separated word, with its offsets; [CLS]/[SEP] around it."""
        out = []
        for text in texts:
            words = [Token(self._word_id(m[0]), m[0], False, m.start(), m.end()) for m in re.finditer(r"\S+", text)]
            out.append([Token(CLS, "[CLS]", True, None, None), *words, Token(SEP, "[SEP]", True, None, None)]
                       if add_special_tokens else words)
        return out

    def decode(self, ids, *, skip_special_tokens: bool) -> list[str]:
        names = {CLS: "[CLS]", SEP: "[SEP]", PAD: "[PAD]"}
        return [" ".join(names[i] if i in names else f"t{i}" for i in seq if not (skip_special_tokens and i in names))
                for seq in ids]

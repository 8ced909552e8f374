"""ColBERT-style multi-vector models (sentence-transformers' MultiVectorEncoder, PyLate's layout).

What `MultiVectorEncoder.encode_query` / `encode_document` compute, as "token ids in, one
forward pass, per-token head out" so that such a model shares the engine's batches:

- Tokens: the model's own query or document prompt (its `[Q] ` / `[D] ` marker) is put before
  the text; the text is cut to the role's length (`query_length` / `document_length`, for
  queries with expansion the expansion `length` under "fixed").
- Query expansion: a query shorter than the expansion `length` is filled up to it with the
  expansion token (`[MASK]`); those positions are attended by the encoder only when the model
  says `attend`, and always kept as output vectors.
- Head: the model's own modules after the encoder (projection `Dense`, `Normalize`), then its
  `MultiVectorMask` decides which positions are output vectors (real tokens, expansion positions
  of queries, minus the skiplist on documents). Inputs of both roles share a batch: the mask
  runs once per role present, rows of the other role untouched.

A request's role is its `input_type` (default `document`); the batch carries it (`Batch.roles`).
Models this doesn't describe (a saved token-pooling module, a Router, `truncate_dim`, a
chat-template backbone) are refused at load rather than served differently from the library.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from embedserve.backends.base import Batch, TokenIds
from embedserve.backends.tokenization import HFTokenizer
from embedserve.errors import ModelLoadError

ROLES = ("query", "document")


class MultiVectorHead:
    def __init__(self, st, position_limit: int):
        from sentence_transformers.base.modules.dense import Dense
        from sentence_transformers.base.modules.normalize import Normalize
        from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

        modules = list(st.children())
        encoder, rest = modules[0], modules[1:]
        unknown = [type(m).__name__ for m in rest if not isinstance(m, (Dense, Normalize, MultiVectorMask))]
        if unknown or getattr(st, "truncate_dim", None):
            what = ", ".join(unknown) if unknown else f"truncate_dim {st.truncate_dim}"
            raise ModelLoadError(f"this multi-vector model uses {what}, which embedserve does not serve yet")
        self.projection = [m for m in rest if not isinstance(m, MultiVectorMask)]
        self.mask = next((m for m in rest if isinstance(m, MultiVectorMask)), None)
        self.expansion = encoder.query_expansion  # {"strategy", "attend", "token", "length"} or None
        tokenizer = st.tokenizer
        self.expansion_id: int | None = None
        if self.expansion is not None:
            token = self.expansion.get("token")
            self.expansion_id = tokenizer.convert_tokens_to_ids(token) if token else tokenizer.mask_token_id
            if self.expansion_id is None:
                self.expansion_id = tokenizer.eos_token_id
            if self.expansion_id is None:
                raise ModelLoadError("the model expands queries but its tokenizer has no expansion, mask or EOS token")
        self.tokenizers = {role: HFTokenizer(tokenizer, min(self._cap(encoder, st, role), position_limit)) for role in ROLES}
        self.dimension = int(st.get_embedding_dimension())

    def _cap(self, encoder, st, role: str) -> int:
        """The length ST cuts a `role` input to (prompt and special tokens included)."""
        expansion = self.expansion if role == "query" else None
        if expansion is not None and expansion["strategy"] == "fixed":
            return int(expansion["length"])
        cap = encoder.query_length if role == "query" else encoder.document_length
        if expansion is not None and cap is not None:
            cap = max(cap, expansion["length"])
        return int(cap or st.max_seq_length)

    @property
    def max_seq_length(self) -> int:
        return max(t.max_length for t in self.tokenizers.values())

    def tokenize(self, texts: Sequence[str], *, truncate: bool, role: str) -> list[TokenIds]:
        sequences = self.tokenizers[role].tokenize(texts, truncate=truncate)
        if role == "query" and self.expansion is not None:
            length = int(self.expansion["length"])
            sequences = [ids + [self.expansion_id] * (length - len(ids)) if len(ids) < length else ids for ids in sequences]
        return sequences

    def expansion_positions(self, batch: Batch) -> torch.Tensor:
        """Where each query row's expansion tokens are: after its last template token, before `length`."""
        positions = np.zeros(batch.input_ids.shape, dtype=bool)
        if self.expansion is not None and batch.roles is not None:
            length = int(self.expansion["length"])
            closing = self.tokenizers["query"].suffix_ids
            for row, role in enumerate(batch.roles):
                if role != "query":
                    continue
                ids = batch.input_ids[row, : int(batch.attention_mask[row].sum())]
                ends = np.flatnonzero(ids == closing[-1]) if closing else np.empty(0, dtype=np.int64)
                start = int(ends[-1]) + 1 if ends.size else len(ids)
                positions[row, start:length] = True
        return torch.from_numpy(positions)

    def encoder_mask(self, batch: Batch, expansion: torch.Tensor) -> torch.Tensor:
        """The encoder's attention mask: expansion positions are masked out unless the model attends to them."""
        mask = torch.from_numpy(batch.attention_mask)
        if self.expansion is not None and not self.expansion["attend"]:
            mask = mask.masked_fill(expansion, 0)
        return mask

    def vectors(self, batch: Batch, features: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Each input's output vectors, in token order, as the library's encode gives them."""
        with torch.inference_mode():
            for module in self.projection:
                features = module(features)
            states = features["token_embeddings"].float()
            keep = features["attention_mask"].bool().clone()
            if self.mask is not None:
                roles = batch.roles or ("document",) * batch.size
                for role in set(roles):
                    rows = torch.tensor([i for i, r in enumerate(roles) if r == role])
                    part = {
                        "input_ids": features["input_ids"][rows],
                        "attention_mask": features["attention_mask"][rows],
                        "query_expansion_positions": features["query_expansion_positions"][rows],
                    }
                    keep[rows] = self.mask(part, task=role)["attention_mask"].bool()
            states = states.cpu().numpy()
            keep = keep.cpu().numpy()
        return [np.ascontiguousarray(states[row][keep[row]]) for row in range(batch.size)]

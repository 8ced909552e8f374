"""Tokenization shared by every backend that uses a Hugging Face (Rust) tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from embedserve.backends.base import TokenIds

# transformers warns on every input longer than model_max_length; we handle length ourselves.
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)


class HFTokenizer:
    """Batch-tokenizes with a fast tokenizer, truncating to the served maximum on request."""

    def __init__(self, tokenizer: Any, max_length: int):
        self._tok = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab_size = len(tokenizer)
        self._prefix, self._suffix = self._special_template(tokenizer)

    @staticmethod
    def _special_template(tokenizer: Any) -> tuple[TokenIds, TokenIds]:
        """The special tokens the tokenizer puts around one sequence, found by probing it."""
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        encoded = self._tok(
            list(texts),
            add_special_tokens=True,
            truncation=truncate,
            max_length=self.max_length if truncate else None,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return encoded["input_ids"]

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        room = self.max_length - len(self._prefix) - len(self._suffix)
        return [[*self._prefix, *(seq[:room] if truncate else seq), *self._suffix] for seq in ids]

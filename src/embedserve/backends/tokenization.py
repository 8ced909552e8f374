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
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab_size = len(tokenizer)
        self._prefix, self._suffix = self._special_template(tokenizer)
        # The Rust tokenizer itself, called directly: one short sentence took 22 us this way and
        # 38 us through the transformers wrapper, with identical ids. Two copies, because
        # truncation is a setting of the tokenizer object; the model's own stays untouched.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._whole = self._cut = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._whole = Tokenizer.from_str(backend.to_str())
            self._whole.no_padding()
            self._whole.no_truncation()
            self._cut = Tokenizer.from_str(backend.to_str())
            self._cut.no_padding()
        self.max_length = max_length

    @property
    def max_length(self) -> int:
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._max_length = value
        if self._cut is not None:
            self._cut.enable_truncation(value)

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
        rust = self._cut if truncate else self._whole
        if rust is not None:
            return [encoding.ids for encoding in rust.encode_batch(list(texts), add_special_tokens=True)]
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

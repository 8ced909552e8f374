"""Tokenization shared by every backend that uses a Hugging Face (Rust) tokenizer.

A text longer than `CUT_CHARS_PER_TOKEN * max_length` characters is not handed to the tokenizer
whole: the model reads at most `max_length` tokens, but the Rust tokenizer holds per-character
state for all of its input (a 16 MB body of 5.4M CJK characters grew the process by 3 GB, never
given back). Such a text is tokenized as a prefix cut where the tokenizer's pipeline provably
cannot join the two sides (backends/cutting.py), and the prefix's last word is not trusted; if
that leaves too few tokens, the prefix doubles, up to the whole text. The ids are those of
tokenizing the whole text: truncated, the same `max_length` ids; not truncated, an input that
fits comes back whole and one that does not comes back as its first `max_length + 1` ids (all
the caller needs to refuse it). Texts up to the cut size, and tokenizers whose pipeline the
proof does not cover, take the plain path unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from embedserve.backends.base import Token, TokenIds
from embedserve.backends.cutting import CutPlan, plan_cuts, settled

# transformers warns on every input longer than model_max_length; we handle length ourselves.
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)

CUT_CHARS_PER_TOKEN = 8  # the first prefix tried: this many characters per token the model reads


class HFTokenizer:
    """Batch-tokenizes with a fast tokenizer, truncating to the served maximum on request."""

    def __init__(self, tokenizer: Any, max_length: int, *, lowercase: bool = False):
        self._tok = tokenizer
        # sentence-transformers' `do_lower_case`: its Transformer module lowercases texts before its
        # tokenizer (not a tokenizer option), so a cased tokenizer under it must see lower-case text
        self.lowercase = lowercase
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.vocab_size = len(tokenizer)
        self._prefix, self._suffix = self._special_template(tokenizer)
        # The Rust tokenizer itself, called directly: one short sentence took 22 us this way and
        # 38 us through the transformers wrapper, with identical ids. Two copies, because
        # truncation is a setting of the tokenizer object; the model's own stays untouched.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._whole = self._cut = None
        self._plan: CutPlan | None = None
        self._wrap: tuple[TokenIds, TokenIds] | None = None
        if backend is not None:
            from tokenizers import Tokenizer

            self._whole = Tokenizer.from_str(backend.to_str())
            self._whole.no_padding()
            self._whole.no_truncation()
            self._cut = Tokenizer.from_str(backend.to_str())
            self._cut.no_padding()
            self._wrap = self._rust_template(self._whole)
            self._plan = plan_cuts(self._whole) if self._wrap is not None else None
        # The slow (Python) tokenizers have no pipeline to inspect and no word ids: they always
        # tokenize whole texts.
        self.max_length = max_length

    @property
    def max_length(self) -> int:
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._max_length = value
        if self._cut is not None:
            self._cut.enable_truncation(value)
        room = value - sum(map(len, self._wrap)) if self._wrap is not None else 0
        self._cut_chars = CUT_CHARS_PER_TOKEN * value if self._plan is not None and room >= 1 else None

    @staticmethod
    def _special_template(tokenizer: Any) -> tuple[TokenIds, TokenIds]:
        """The special tokens the tokenizer puts around one sequence, found by probing it."""
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
        return [], []

    @staticmethod
    def _rust_template(rust: Any) -> tuple[TokenIds, TokenIds] | None:
        """The Rust tokenizer's special tokens around one sequence, if they are exactly what it
        counts when truncating (then cut ids can be wrapped as it would wrap them)."""
        bare = rust.encode("a b", add_special_tokens=False).ids
        full = rust.encode("a b", add_special_tokens=True).ids
        added = rust.post_processor.num_special_tokens_to_add(False) if rust.post_processor is not None else 0
        start = next((s for s in range(len(full) - len(bare) + 1) if full[s : s + len(bare)] == bare), None)
        if not bare or start is None or len(full) - len(bare) != added:
            return None
        return full[:start], full[start + len(bare) :]

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        if self.lowercase:
            texts = [text.lower() for text in texts]
        rust = self._cut if truncate else self._whole
        if rust is not None:
            texts = list(texts)
            if self._cut_chars is not None and texts and max(map(len, texts)) > self._cut_chars:
                return self._tokenize_long(texts, truncate=truncate)
            return [encoding.ids for encoding in rust.encode_batch(texts, add_special_tokens=True)]
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

    def _tokenize_long(self, texts: list[str], *, truncate: bool) -> list[TokenIds]:
        """Short texts in one batch; each long one from cut prefixes, doubling while the
        prefix's settled tokens are fewer than the model keeps (plus one to tell "too long")."""
        rust = self._cut if truncate else self._whole
        prefix, suffix = self._wrap
        room = self.max_length - len(prefix) - len(suffix)
        need = room if truncate else room + 1
        out: list[TokenIds | None] = [None] * len(texts)
        short = [i for i, text in enumerate(texts) if len(text) <= self._cut_chars]
        for i, encoding in zip(short, rust.encode_batch([texts[i] for i in short], add_special_tokens=True)):
            out[i] = encoding.ids
        pending = [(i, self._cut_chars) for i, text in enumerate(texts) if len(text) > self._cut_chars]
        while pending:
            cuts, whole = [], []
            for i, target in pending:
                x = self._plan.find(texts[i], target) if target < len(texts[i]) else None
                (cuts if x is not None else whole).append((i, x, target))
            pieces = [texts[i][:x] for i, x, _ in cuts]
            pending = []
            for (i, x, target), encoding in zip(cuts, self._whole.encode_batch(pieces, add_special_tokens=False)):
                if settled(encoding.word_ids) >= need:
                    out[i] = [*prefix, *encoding.ids[:need], *suffix]
                else:
                    pending.append((i, 2 * max(target, x)))
            whole_texts = [texts[i] for i, _, _ in whole]
            for (i, _, _), encoding in zip(whole, rust.encode_batch(whole_texts, add_special_tokens=True)):
                out[i] = encoding.ids
        return out  # type: ignore[return-value]

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        room = self.max_length - len(self._prefix) - len(self._suffix)
        return [[*self._prefix, *(seq[:room] if truncate else seq), *self._suffix] for seq in ids]

    @property
    def suffix_ids(self) -> TokenIds:
        """The special tokens the tokenizer puts after a sequence (BERT: [SEP])."""
        return list(self._suffix)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each id's text as the tokenizer decodes it alone (FlagEmbedding's `convert_id_to_token`)."""
        return [self._tok.decode([int(i)]) for i in ids]

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[Token]]:
        """Every token of each text, untruncated (TEI's /tokenize): a special token's text is the
        token itself and it has no offsets; any other's text is the stretch of the input it covers
        (character offsets, as the Rust tokenizer's Python binding gives them)."""
        if self._whole is None:
            return [self._slow_tokens(text, add_special_tokens) for text in texts]
        out = []
        for text, encoding in zip(texts, self._whole.encode_batch(list(texts), add_special_tokens=add_special_tokens)):
            out.append([
                Token(i, token, True, None, None) if special else Token(i, text[start:stop], False, start, stop)
                for i, token, special, (start, stop) in zip(
                    encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets
                )
            ])
        return out

    def _slow_tokens(self, text: str, add_special_tokens: bool) -> list[Token]:
        """A slow (Python) tokenizer has no offsets: each token's own text, no positions."""
        ids = self._tok(text, add_special_tokens=add_special_tokens)["input_ids"]
        special = set(self._tok.all_special_ids)
        return [Token(i, token, i in special, None, None) for i, token in zip(ids, self._tok.convert_ids_to_tokens(ids))]

    def decode(self, ids: Sequence[TokenIds], *, skip_special_tokens: bool) -> list[str]:
        if self._whole is not None:
            return self._whole.decode_batch([list(seq) for seq in ids], skip_special_tokens=skip_special_tokens)
        return [self._tok.decode(list(seq), skip_special_tokens=skip_special_tokens) for seq in ids]



class HFTokenizerMethods:
    """A backend's tokenizer methods, for a backend that tokenizes with an `HFTokenizer` (`_tokenizer`)
    and joins (query, document) pairs with the model's own Hugging Face tokenizer (`_pair_tokenizer`):
    the torch backend, and the weightless one of a front-end process (backends/tokenizer_only.py), so
    both make the same ids by construction."""

    _tokenizer: HFTokenizer
    _pair_tokenizer: Any
    model_input_names: list[str]
    info: Any  # ModelInfo: its max_seq_length

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        return self._tokenizer.tokenize(texts, truncate=truncate)

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        return self._tokenizer.wrap_ids(ids, truncate=truncate)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return self._tokenizer.token_texts(ids)

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[Token]]:
        return self._tokenizer.tokens(texts, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[TokenIds], *, skip_special_tokens: bool) -> list[str]:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str]], *, truncate: bool
    ) -> tuple[list[TokenIds], list[TokenIds] | None]:
        """Pairs as the model's tokenizer joins them; cut to the model's length by cutting only the
        document (a query longer than the model takes is cut as a last resort). Segment ids too when
        the model reads them."""
        tokenizer, max_length = self._pair_tokenizer, self.info.max_seq_length
        queries, documents = [q for q, _ in pairs], [d for _, d in pairs]
        options = {"truncation": "only_second", "max_length": max_length} if truncate else {}
        try:
            encoded = tokenizer(queries, documents, **options)
        except Exception:  # noqa: BLE001 - the query alone is over the length: cut both, longest first
            encoded = tokenizer(queries, documents, truncation="longest_first", max_length=max_length)
        types = encoded.get("token_type_ids") if "token_type_ids" in self.model_input_names else None
        return list(encoded["input_ids"]), list(types) if types is not None else None

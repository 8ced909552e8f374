"""A tiny, random-weight ColBERT-style `MultiVectorEncoder` folder, saved by sentence-transformers' own code.

Pipeline (what PyLate-style ColBERT checkpoints look like in sentence-transformers 6.3):

    0 Transformer      tiny BERT from `tiny_models.build_bert_model`, with the query/document
                       markers `[Q]` / `[D]` added to the tokenizer as special, non-normalised
                       tokens (so `"[Q] " + text` tokenises to `[CLS] [Q] ...`), the embedding
                       table resized for them, `document_length=DOCUMENT_LENGTH` and classic
                       ColBERT query expansion `{"strategy": "fixed", "attend": False,
                       "length": QUERY_LENGTH}` (pad with `[MASK]` to exactly QUERY_LENGTH).
    1 Dense            token-level projection HIDDEN -> PROJECTION_DIM, no bias, Identity.
    2 MultiVectorMask  `skiplist_words = list(string.punctuation)` on documents (PyLate default).
    3 Normalize        token-level L2 normalisation.

Prompts `{"query": "[Q] ", "document": "[D] "}` go to config_sentence_transformers.json, with
`similarity_fn_name` "maxsim". Loads back with `MultiVectorEncoder(str(path))`.
"""

from __future__ import annotations

import shutil
import string
import tempfile
from pathlib import Path

from tests.support.tiny_models import DEFAULT_WORDS, HIDDEN, PUNCTUATION, build_bert_model

QUERY_MARKER = "[Q]"
DOCUMENT_MARKER = "[D]"
QUERY_LENGTH = 16  # PyLate's default is 32; smaller here so tests can overflow it cheaply
DOCUMENT_LENGTH = 24  # PyLate's default is 180
PROJECTION_DIM = 16

__all__ = ["build_colbert", "QUERY_MARKER", "DOCUMENT_MARKER", "QUERY_LENGTH", "DOCUMENT_LENGTH", "PROJECTION_DIM"]


def build_colbert(
    root: str | Path,
    name: str = "acme--tiny-colbert",
    seed: int = 0,
    *,
    query_length: int = QUERY_LENGTH,
    document_length: int = DOCUMENT_LENGTH,
    projection_dim: int = PROJECTION_DIM,
    attend_to_expansion: bool = False,
    expansion_strategy: str = "fixed",
    skiplist_words: list[str] | None = None,
    similarity_fn_name: str = "maxsim",
) -> Path:
    """Build `root/name` as a MultiVectorEncoder folder and return its path.

    `skiplist_words` defaults to `string.punctuation` (pass `[]` for none). The backbone is built
    into a temporary folder first and then re-saved, complete, by `MultiVectorEncoder.save`.
    """
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from transformers import AddedToken

    folder = Path(root) / name
    if skiplist_words is None:
        skiplist_words = list(string.punctuation)

    with tempfile.TemporaryDirectory() as tmp:
        # Every ASCII punctuation character gets its own piece, as in real BERT vocabularies, so the
        # whole punctuation skiplist resolves to ids (the shared tiny vocabulary lacks `[`, `#`, ...).
        extra = tuple(c for c in string.punctuation if c not in PUNCTUATION)
        backbone = build_bert_model(
            Path(tmp) / "backbone", words=DEFAULT_WORDS + extra, seed=seed, tokenizer_max_length=512
        )
        transformer = Transformer(
            str(backbone),
            document_length=document_length,
            query_expansion={"strategy": expansion_strategy, "attend": attend_to_expansion, "length": query_length},
        )
        tokenizer = transformer.tokenizer
        markers = [AddedToken(m, normalized=False, special=True) for m in (QUERY_MARKER, DOCUMENT_MARKER)]
        tokenizer.add_special_tokens({"additional_special_tokens": markers})
        torch.manual_seed(seed + 1)
        transformer.auto_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)

        torch.manual_seed(seed + 2)
        dense = Dense(
            in_features=HIDDEN,
            out_features=projection_dim,
            bias=False,
            activation_function=torch.nn.Identity(),
            module_input_name="token_embeddings",
        )
        model = MultiVectorEncoder(
            modules=[
                transformer,
                dense,
                MultiVectorMask(skiplist_words=skiplist_words),
                Normalize(module_input_name="token_embeddings"),
            ],
            prompts={"query": f"{QUERY_MARKER} ", "document": f"{DOCUMENT_MARKER} "},
            similarity_fn_name=similarity_fn_name,
            device="cpu",
        )
        if folder.exists():
            shutil.rmtree(folder)
        model.save(str(folder))
    return folder

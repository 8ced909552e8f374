"""Training pairs: parsing what clients send, the normalised JSONL files a job keeps, the held-out split.

Clients send either the Embedding Service's `text_content` (`query<TAB>passage`, one pair a line)
or JSONL of `{"anchor", "positive", "negative"?}`. Both are normalised to the JSONL form in the
job's folder, so the training process reads one format and a restarted job trains on exactly
the data it was given. Lines that do not parse are not an error (the Embedding Service ignored
them); they are counted so that the client learns how much of its data was used.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "HELD_OUT_FRACTION",
    "MIN_HELD_OUT",
    "MAX_HELD_OUT",
    "Pair",
    "Parsed",
    "parse_tsv",
    "parse_jsonl",
    "parse_pairs",
    "read_pairs",
    "write_pairs",
    "split_held_out",
]

# When no validation data is given, this share of the pairs is held out for MRR@10 / recall@1
# before and after training: at least MIN_HELD_OUT pairs (a smaller split makes MRR too noisy to
# show a change) and at most MAX_HELD_OUT (evaluation is all-pairs, so its cost grows
# quadratically). No split is carved when fewer than 2 * MIN_HELD_OUT pairs are given: training
# on so little would lose too much to the split, and the job is then trained without metrics.
HELD_OUT_FRACTION = 0.1
MIN_HELD_OUT = 10
MAX_HELD_OUT = 1000


@dataclass(frozen=True)
class Pair:
    anchor: str
    positive: str
    negative: str | None = None

    def to_json(self) -> dict[str, str]:
        data = {"anchor": self.anchor, "positive": self.positive}
        if self.negative is not None:
            data["negative"] = self.negative
        return data


@dataclass(frozen=True)
class Parsed:
    """The pairs found and how many non-blank lines were ignored (blank lines are not counted)."""

    pairs: list[Pair]
    ignored: int


def parse_tsv(text: str) -> Parsed:
    """`query<TAB>passage` lines, as the Embedding Service's `/fine-tune` took them.

    A line counts only with exactly two non-empty tab-separated fields (after stripping
    whitespace around each); anything else is ignored and counted. A trailing `\\r` is dropped.
    """
    pairs: list[Pair] = []
    ignored = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) == 2 and all(fields):
            pairs.append(Pair(fields[0], fields[1]))
        else:
            ignored += 1
    return Parsed(pairs, ignored)


def _pair_from_json(value: object) -> Pair | None:
    if not isinstance(value, dict):
        return None
    anchor, positive, negative = value.get("anchor"), value.get("positive"), value.get("negative")
    if not (isinstance(anchor, str) and anchor.strip() and isinstance(positive, str) and positive.strip()):
        return None
    if negative is not None and not (isinstance(negative, str) and negative.strip()):
        return None
    return Pair(anchor, positive, negative)


def parse_jsonl(text: str) -> Parsed:
    """JSONL of `{"anchor", "positive", "negative"?}`; lines that are not such objects are ignored.

    Mixing rows with and without `negative` would give the trainer ragged columns, so when some
    rows have one and others not, the negatives are dropped (MNRL still uses in-batch negatives).
    """
    pairs: list[Pair] = []
    ignored = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            pair = _pair_from_json(json.loads(line))
        except json.JSONDecodeError:
            pair = None
        if pair is None:
            ignored += 1
        else:
            pairs.append(pair)
    with_negative = sum(p.negative is not None for p in pairs)
    if 0 < with_negative < len(pairs):
        pairs = [Pair(p.anchor, p.positive) for p in pairs]
    return Parsed(pairs, ignored)


def parse_pairs(text: str, fmt: str | None = None) -> Parsed:
    """Either format; `fmt` ("tsv" | "jsonl") or, when None, JSONL if the first non-blank line
    starts with `{` (a TSV query could too, but then it would not parse as a JSON object)."""
    if fmt is None:
        first = next((line for line in text.splitlines() if line.strip()), "")
        fmt = "jsonl" if first.lstrip().startswith("{") and _looks_like_json(first) else "tsv"
    if fmt == "jsonl":
        return parse_jsonl(text)
    if fmt == "tsv":
        return parse_tsv(text)
    raise ValueError(f"unknown pairs format {fmt!r} (tsv or jsonl)")


def _looks_like_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_file(path: str | Path) -> Parsed:
    """A TSV or JSONL file from disk (format from the suffix, else sniffed)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    fmt = "jsonl" if suffix in (".jsonl", ".json") else "tsv" if suffix in (".tsv", ".txt") else None
    return parse_pairs(text, fmt)


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> int:
    """The normalised JSONL a job keeps; returns the count written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for pair in pairs:
            out.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_pairs(path: str | Path) -> list[Pair]:
    """Read back a file written by `write_pairs` (strict: it was written by us)."""
    pairs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            pair = _pair_from_json(json.loads(line))
            if pair is None:
                raise ValueError(f"{path}: not a pair: {line[:80]!r}")
            pairs.append(pair)
    return pairs


def held_out_size(n: int) -> int:
    """How many of n pairs `split_held_out` holds out (0 when there are too few to split)."""
    if n < 2 * MIN_HELD_OUT:
        return 0
    return min(MAX_HELD_OUT, max(MIN_HELD_OUT, round(n * HELD_OUT_FRACTION)))


def split_held_out(pairs: Sequence[Pair], seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, held_out): a seeded random `held_out_size` share held out, the order otherwise kept.

    Seeded so that a resumed or repeated job evaluates on the same pairs.
    """
    k = held_out_size(len(pairs))
    chosen = set(random.Random(seed).sample(range(len(pairs)), k))
    train = [p for i, p in enumerate(pairs) if i not in chosen]
    held = [p for i, p in enumerate(pairs) if i in chosen]
    return train, held

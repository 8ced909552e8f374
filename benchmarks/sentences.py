"""Benchmark sentences: real, varied-length English from the STS benchmark test split.

Why real sentences rather than one repeated string: padded batch cost depends on the
length mix, and a server that batches by token budget behaves differently on a uniform
input. Why 5 to 40 words: drops fragments and the few very long forum posts, so numbers
reflect typical short-text embedding traffic and stay comparable between runs.

The order is the file order (sentence 1 then sentence 2 of each row, duplicates dropped),
so every run and every server sees exactly the same inputs.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO_ROOT.parent / "shared" / "data" / "sts-benchmark-test.tsv"
ENV_VAR = "EMBEDSERVE_BENCH_SENTENCES"  # optional override of the file location
MIN_WORDS, MAX_WORDS = 5, 40


def default_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def load_sentences(
    path: str | Path | None = None, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> list[str]:
    """Return the deduplicated sentences with min_words..max_words words, in file order.

    The TSV has no header; columns 5 and 6 hold the sentence pair. Some rows carry extra
    trailing columns (source attributions), and the text contains stray quote characters,
    hence QUOTE_NONE and reading by index rather than by a fixed column count.
    """
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise FileNotFoundError(f"benchmark sentences not found: {path} (set {ENV_VAR} or --sentences)")
    seen: set[str] = set()
    out: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            for col in (5, 6):
                if col >= len(row):
                    continue
                text = " ".join(row[col].split())
                if min_words <= len(text.split()) <= max_words and text not in seen:
                    seen.add(text)
                    out.append(text)
    if not out:
        raise ValueError(f"no usable sentences in {path}")
    return out


WORKLOADS = ("sts", "uniform")


def uniform_lengths(
    path: str | Path | None = None, count: int = 2048, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS,
    seed: int = 0,
) -> list[str]:
    """`count` texts whose lengths are drawn uniformly from min_words..max_words words.

    Why a second workload: the STS sentences of 5 to 40 words are mostly short (mean ~10
    words), while "sentences of 5 to 40 words" read as an even spread averages ~22 words,
    which weighs padding and the model's maths more than per-request overheads. Each text
    starts at the next sentence start of the STS file (read in file order) after the last
    text, and takes the drawn number of words, running on into the following sentences
    where one is too short; at the file's end it starts over. Seeded, so
    every run and every server sees the same texts.
    """
    import bisect
    import random

    base = load_sentences(path, min_words=1, max_words=10**6)
    words: list[str] = []
    starts: list[int] = []
    for sentence in base:
        starts.append(len(words))
        words.extend(sentence.split())
    rng = random.Random(seed)
    out: list[str] = []
    position = 0
    for _ in range(count):
        index = bisect.bisect_left(starts, position)  # the next sentence start from here
        start = starts[index] if index < len(starts) and starts[index] + max_words <= len(words) else 0
        take = rng.randint(min_words, max_words)
        out.append(" ".join(words[start : start + take]))
        position = start + take
    return out


def load_workload(kind: str = "sts", path: str | Path | None = None) -> list[str]:
    """The benchmark texts by name: "sts" (the STS sentences as they are) or "uniform"."""
    if kind == "sts":
        return load_sentences(path)
    if kind == "uniform":
        return uniform_lengths(path)
    raise ValueError(f"unknown workload {kind!r}; choose from {', '.join(WORKLOADS)}")


if __name__ == "__main__":
    # python benchmarks/sentences.py [TSV or ""] [sts|uniform]
    sents = load_workload(sys.argv[2] if len(sys.argv) > 2 else "sts", (sys.argv[1] if len(sys.argv) > 1 else "") or None)
    words = [len(s.split()) for s in sents]
    print(f"{len(sents)} sentences, {min(words)}-{max(words)} words, mean {sum(words) / len(words):.1f}")

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


if __name__ == "__main__":
    sents = load_sentences(sys.argv[1] if len(sys.argv) > 1 else None)
    words = [len(s.split()) for s in sents]
    print(f"{len(sents)} sentences, {min(words)}-{max(words)} words, mean {sum(words) / len(words):.1f}")

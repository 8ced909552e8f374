"""The fidelity guard for cross-encoders: a fast mode is judged by the scores it gives pairs.

An embedder's fast mode is judged by the cosine of its vectors to fp32's (backends/fidelity.py);
a cross-encoder has no vector, and what its users see is scores and the order they put documents
in. So a cross-encoder's fast mode (ONNX fp32 or int8, torch bf16 or fp16) scores a fixed set of
calibration pairs, and so does the torch fp32 reference, and the two are compared.

**Calibration pairs.** Every text of `fidelity.calibration_texts()` (64 short, long and
multilingual sentences, the set embedders are measured on) is a query, scored against the 8 texts
at offsets 1, 2, 3, 5, 8, 13, 21 and 34 after it (wrapping round) as its documents: 512 pairs.
The file keeps related sentences side by side (a question, then its answer; two beach scenes), so
the near offsets give a query related documents and the far ones unrelated ones: each ranking
mixes clear winners with near-ties between unrelated documents, which is where reduced precision
swaps documents first. Every text is a document 8 times, so the short, long and non-English ones
are in both roles. The pairs are tokenized as served (`tokenize_pairs`, the document cut at the
model's maximum) and scored in length-sorted padded batches of 16, so padding is compared too.

**Measures**, on scores after the model's own activation (`activate_scores`, CrossEncoder's
`activation_fn`: a sigmoid for one label; for several, sentence-transformers' default is the
identity, so those are logits), what clients get unless they ask for raw scores, recorded in
`Fidelity.outputs`:
- `score_max_abs_error` / `score_mean_abs_error`: over every pair and label;
- `score_rank_agreement`: the Spearman rank correlation between the fast mode's and the
  reference's scores of one query's 8 documents (ties share their average rank), averaged over
  queries (and labels); `score_min_rank_agreement` is the worst query's. Spearman rather than
  Kendall's tau because it weighs a swap by how far documents move: two near-tied documents
  trading places (reduced precision's typical slip) costs a query 0.024 of Spearman, against
  0.071 of tau, while a relevant document falling to the bottom still costs it most of its 1.0;
- `score_error_bound`: the bound the max error is held to (below).

`Fidelity.mean_cosine` / `min_cosine` of a cross-encoder hold the mean / min rank agreement:
Spearman is the cosine of the two mean-centred rank vectors, so `--min-fidelity`, the int8 target
and /metrics' fidelity gauge read it where they read an embedder's cosine.

**The bar** (`guard_failure`): a mode is refused (explicit) or dropped for torch fp32 (auto) unless
- the mean rank agreement is at least `--min-fidelity` (0.99 by default: of 64 queries' 8-document
  orderings, at most ~26 adjacent near-ties may trade places), and
- `score_max_abs_error` is at most the bound: EXACT_MAX_ABS_ERROR (1e-4) for fp32 graphs, which
  compute the same function in another order. On all-MiniLM-L6-v2 with a random head, whose
  scores of one query's documents spread over only ~0.009, the fp32 graph stays within 6e-8 of
  torch, while the same graph fed no token types moves scores by 1.4e-3 and one that ignores the
  attention mask by 6.7e-3 (and both reorder documents); REDUCED_MAX_ABS_ERROR
  (0.05) for int8, bf16 and fp16: no relevance probability moves by more than 5 points, which
  keeps score thresholds that clients apply meaningful. A model whose activation is the identity
  returns logits, not probabilities; its bound is scaled by the reference scores' range when
  that exceeds 1, so the bound is a fraction of the spread the model uses.
Auto keeps CPU bf16 (`auto_keeps`) only if it passes that bar, is at least 1.5x faster
(factory.py), and keeps every score within AUTO_MAX_ABS_ERROR (0.01, scaled as above) of fp32's.
That is what auto asks of an embedder's bf16 in a cross-encoder's terms: a min cosine of 0.9999
lets a cosine similarity between two texts move by up to ~0.014. Then documents can only trade
places with ones whose fp32 scores are within 0.02 of theirs, so the per-query orderings need not
be identical: a random-head MiniLM's scores of one query's documents differ by as little as 1e-4,
and bf16 swaps some of those (worst query's rank agreement 0.95) while moving no score by more
than 1.5e-4.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from embedserve.backends.base import Backend, Batch, Fidelity
from embedserve.backends.fidelity import calibration_texts
from embedserve.models.tasks import Task

DOCUMENT_OFFSETS = (1, 2, 3, 5, 8, 13, 21, 34)
EXACT_MAX_ABS_ERROR = 1e-4
REDUCED_MAX_ABS_ERROR = 0.05
AUTO_MAX_ABS_ERROR = 0.01
_BATCH = 16
_SCORE = frozenset({Task.SCORE})


def calibration_pairs(texts: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(query, document) pairs: each text against the texts DOCUMENT_OFFSETS after it, query by query."""
    texts = list(texts if texts is not None else calibration_texts())
    return [(texts[i], texts[(i + offset) % len(texts)]) for i in range(len(texts)) for offset in DOCUMENT_OFFSETS]


@dataclass(frozen=True)
class CalibrationPairs:
    """The calibration pairs tokenized by a backend, in the padded batches they are scored in."""

    batches: list[Batch]
    order: list[int]  # the pair each row is, batch after batch
    queries: int

    @classmethod
    def tokenized(cls, backend: Backend, texts: Sequence[str] | None = None) -> CalibrationPairs:
        pairs = calibration_pairs(texts)
        ids, types = backend.tokenize_pairs(pairs, truncate=True)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = []
        for start in range(0, len(order), _BATCH):
            rows = order[start : start + _BATCH]
            row_types = [types[i] for i in rows] if types is not None else None
            batches.append(Batch.from_ids([ids[i] for i in rows], pad_id=backend.pad_id, type_ids=row_types))
        return cls(batches, order, len(pairs) // len(DOCUMENT_OFFSETS))

    @property
    def size(self) -> int:
        return len(self.order)

    def scores(self, logits_of: Callable[[Batch], np.ndarray], activate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Activated scores [queries, documents, labels] from `logits_of(batch)` (raw [rows, labels])."""
        rows = np.concatenate([np.asarray(logits_of(batch), dtype=np.float32) for batch in self.batches])
        logits = np.empty_like(rows)
        logits[self.order] = rows
        return np.asarray(activate(logits), dtype=np.float64).reshape(self.queries, len(DOCUMENT_OFFSETS), -1)

    def seconds(self, logits_of: Callable[[Batch], np.ndarray]) -> float:
        """Wall time of one pass over every batch."""
        started = time.perf_counter()
        for batch in self.batches:
            logits_of(batch)
        return time.perf_counter() - started


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (1 = lowest), tied values sharing their average rank."""
    below = (values[..., :, None] > values[..., None, :]).sum(axis=-1)
    equal = (values[..., :, None] == values[..., None, :]).sum(axis=-1)
    return below + (equal + 1) / 2


def spearman(fast: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation along the last axis (the cosine of the centred rank vectors).

    A ranking with no order at all (every score tied) agrees fully with another such ranking and
    not at all with an ordered one."""
    a, b = average_ranks(fast), average_ranks(ref)
    a, b = a - a.mean(axis=-1, keepdims=True), b - b.mean(axis=-1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    both_flat = ((a == 0).all(axis=-1)) & ((b == 0).all(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(norms > 0, (a * b).sum(axis=-1) / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(both_flat, 1.0, rho)


def compare_scores(mode: str, fast: np.ndarray, ref: np.ndarray, *, exact: bool, reference: str = "torch fp32") -> Fidelity:
    """Fidelity of activated scores [queries, documents, labels] to the reference's (module docstring).

    exact: the mode computes in fp32 (held to EXACT_MAX_ABS_ERROR, else REDUCED_MAX_ABS_ERROR)."""
    error = np.abs(fast - ref)
    agreement = spearman(np.swapaxes(fast, 1, 2), np.swapaxes(ref, 1, 2))  # [queries, labels]
    spread = max(1.0, float(ref.max() - ref.min()))
    bound = (EXACT_MAX_ABS_ERROR if exact else REDUCED_MAX_ABS_ERROR) * spread
    outputs = {
        "score_max_abs_error": float(error.max()),
        "score_mean_abs_error": float(error.mean()),
        "score_rank_agreement": float(agreement.mean()),
        "score_min_rank_agreement": float(agreement.min()),
        "score_error_bound": bound,
    }
    return Fidelity(mode, reference, float(agreement.mean()), float(agreement.min()), int(error.shape[0] * error.shape[1]),
                    outputs)


def is_score_fidelity(fidelity: Fidelity) -> bool:
    return "score_error_bound" in fidelity.outputs


def error_within_bound(fidelity: Fidelity) -> bool:
    return fidelity.outputs["score_max_abs_error"] <= fidelity.outputs["score_error_bound"]


def guard_failure(fidelity: Fidelity, min_fidelity: float) -> str | None:
    """Why a cross-encoder's mode fails the bar (module docstring), or None when it passes."""
    problems = []
    if fidelity.mean_cosine < min_fidelity:
        problems.append(
            f"a mean per-query rank agreement (Spearman) of {fidelity.mean_cosine:.6f} (min {fidelity.min_cosine:.6f}), "
            f"below --min-fidelity {min_fidelity}"
        )
    if not error_within_bound(fidelity):
        problems.append(
            f"a max abs score error of {fidelity.outputs['score_max_abs_error']:.3g}, above its bound "
            f"{fidelity.outputs['score_error_bound']:.3g}"
        )
    if not problems:
        return None
    return f"{fidelity.mode} keeps {' and '.join(problems)} against {fidelity.reference} on {fidelity.samples} calibration pairs"


def _auto_error_bound(fidelity: Fidelity) -> float:
    # A reduced mode's bound is REDUCED_MAX_ABS_ERROR times the reference scores' spread (>= 1).
    return AUTO_MAX_ABS_ERROR * fidelity.outputs["score_error_bound"] / REDUCED_MAX_ABS_ERROR


def auto_keeps(fidelity: Fidelity, min_fidelity: float) -> bool:
    """Whether auto may serve this reduced-precision mode in place of fp32 (module docstring)."""
    close = fidelity.outputs["score_max_abs_error"] <= _auto_error_bound(fidelity)
    return close and guard_failure(fidelity, min_fidelity) is None


def auto_bar(fidelity: Fidelity, min_fidelity: float) -> str:
    """What `auto_keeps` asks, in words, for the log."""
    return f"mean rank agreement >= {min_fidelity}, max abs score error <= {_auto_error_bound(fidelity):.3g}"


def summary(fidelity: Fidelity) -> str:
    """The score measures in a few words, for the log."""
    out = fidelity.outputs
    return (f"mean rank agreement {fidelity.mean_cosine:.6f} (min {fidelity.min_cosine:.6f}), "
            f"max abs score error {out['score_max_abs_error']:.3g} (bound {out['score_error_bound']:.3g})")


def quantization_measure(fidelity: Fidelity, target: float) -> float:
    """One number for int8's layer search (onnx_export.quantize_within_fidelity), reaching `target`
    only when both measures pass: the rank agreement, and the max error mapped onto the same scale
    (no error: 1.0; an error at the bound: `target` itself)."""
    error = fidelity.outputs["score_max_abs_error"] / fidelity.outputs["score_error_bound"]
    return min(fidelity.mean_cosine, 1.0 - (1.0 - target) * error)


def measure_reduced_precision(
    backend: Backend, dtype: str, lower: Callable[[Callable[[], float]], None]
) -> tuple[Fidelity, float]:
    """A torch cross-encoder's scores in fp32, then after `lower(seconds)` (bf16 / fp16; `seconds()`
    times the calibration pairs, for lower's own choices): the fidelity of the lowered model and its
    speed-up over fp32 on the calibration pairs."""
    pairs = CalibrationPairs.tokenized(backend)

    def logits_of(batch: Batch) -> np.ndarray:
        return backend.encode(batch, _SCORE).scores

    reference = pairs.scores(logits_of, backend.activate_scores)  # also the warm-up
    fp32_seconds = pairs.seconds(logits_of)
    lower(lambda: pairs.seconds(logits_of))
    fast = pairs.scores(logits_of, backend.activate_scores)
    speedup = fp32_seconds / max(pairs.seconds(logits_of), 1e-9)
    return compare_scores(f"torch {dtype}", fast, reference, exact=False), speedup

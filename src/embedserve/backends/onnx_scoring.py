"""Cross-encoders on ONNX Runtime: the whole sequence classifier as one graph, fp32 or int8.

An embedder's graph stops at the token states and the model's own pooling runs after it
(onnx_backend.py); a cross-encoder's output is a few logits per pair, so its graph is the
whole `...ForSequenceClassification` model (encoder, pooler, classifier; input_ids,
attention_mask and token_type_ids in, logits [batch, labels] out) and only the model's
activation (sigmoid / softmax, a few floats) runs after it, in torch as CrossEncoder does.
Export, offline optimisation, the cache, int8 with smoothing and the layer search are the
embedder's (this class reuses OnnxBackend's), with one difference: every "how close is this
graph" is measured on the scores of the calibration pairs (backends/score_fidelity.py), so
int8 keeps layers in fp32 until the scores, not vectors, meet the target.

Timed in-process on all-MiniLM-L6-v2 with a random one-label head (2 cores of an Intel Xeon with
AMX, median of 7-30 runs): one query with 32 passages of 60 words (a 32 x 106-token batch) took
366 ms in torch fp32, 378 ms in ONNX fp32, 236 ms in ONNX int8 (8 of its 36 MatMuls kept fp32 to
hold the rank agreement) and 136 ms in torch bf16; one pair (75 tokens) 12.1, 9.0, 5.5 and 8.2 ms.
The fp32 graph wins where per-batch overhead counts (small requests) and ties on large batches.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from embedserve.backends import score_fidelity
from embedserve.backends.base import Batch, Fidelity, Outputs, TokenIds
from embedserve.backends.onnx_backend import OnnxBackend
from embedserve.backends.onnx_export import GraphCache, export_encoder
from embedserve.backends.score_fidelity import CalibrationPairs
from embedserve.errors import ModelLoadError
from embedserve.models.tasks import Task

log = logging.getLogger(__name__)

_SCORE = frozenset({Task.SCORE})


class OnnxScoringBackend(OnnxBackend):
    """A cross-encoder as an ONNX graph. OnnxBackend's __init__ measures vectors, so this one
    replaces it; the graph building, caching, quantisation and tokenizer delegation are shared."""

    def __init__(
        self, path: str | Path, *, threads: int = 0, dtype: str = "fp32", cache_dir: Path,
        quantization_target: float = 0.99,
    ):
        path = Path(path)
        self._start(path, threads, dtype, quantization_target)
        if self.kind.name != "cross-encoder":
            raise ModelLoadError(f"OnnxScoringBackend serves cross-encoders, and this is a {self.kind.name} model")
        if self._torch.pooling_modules:
            # The graph is the transformer module's model alone; CrossEncoder would run these after it.
            names = ", ".join(type(m).__name__ for m in self._torch.pooling_modules)
            raise ModelLoadError(f"this cross-encoder has modules after its transformer ({names}): run it with --backend torch")
        self.uses_roles = False
        self._mv, self._splade = None, False
        key = self._graph_key(path, dtype, "sequence-classification")
        self.cache = GraphCache(cache_dir)
        self._pairs = CalibrationPairs.tokenized(self._torch)
        self._reference = self._pairs.scores(self._torch_logits, self._torch.activate_scores)
        self.cache_hit = self._open(key, dtype)
        self.info = replace(self._torch.info, backend="onnx", dtype=dtype, weights_bytes=self._graph_bytes)
        result = self._measure(f"onnx {dtype}", self.forward, exact=dtype == "fp32")
        self.info = replace(self.info, fidelity=result)
        self._torch.release_encoder()
        log.info("onnx %s scoring graph %s (%s): %s", dtype, "from cache" if self.cache_hit else "built", key, result)

    def _torch_logits(self, batch: Batch) -> np.ndarray:
        return self._torch.encode(batch, _SCORE).scores

    def _export(self, raw: Path) -> None:
        export_encoder(self._torch.transformer_model, self._inputs, raw, scores=True)

    def _measure(self, mode: str, run_graph, *, exact: bool) -> Fidelity:
        """How close a graph's scores (`run_graph(batch)` -> logits) are to the torch fp32 reference's."""
        fast = self._pairs.scores(run_graph, self._torch.activate_scores)
        return score_fidelity.compare_scores(mode, fast, self._reference, exact=exact)

    def _graph_mean_cosine(self, graph: Path) -> float:
        """The int8 layer search's measure of a candidate graph (score_fidelity.quantization_measure)."""
        session = self._session_for(graph)
        measured = self._measure("candidate", lambda batch: self._run(session, batch), exact=False)
        return score_fidelity.quantization_measure(measured, self._quantization_target)

    def _calibration_batches(self) -> list[Batch]:
        """What smoothing's channel maxima are read on: the calibration pairs."""
        return self._pairs.batches

    def tokenize_pairs(self, pairs, *, truncate: bool) -> tuple[list[TokenIds], list[TokenIds] | None]:
        return self._torch.tokenize_pairs(pairs, truncate=truncate)

    def activate_scores(self, logits: np.ndarray) -> np.ndarray:
        return self._torch.activate_scores(logits)

    def heads(self, batch: Batch, hidden: np.ndarray, tasks: frozenset[Task]) -> Outputs:
        return Outputs(scores=hidden)

    def pool(self, batch: Batch, hidden: np.ndarray) -> np.ndarray:
        raise TypeError("a cross-encoder scores pairs: it has no vector to pool")

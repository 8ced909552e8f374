"""ONNX Runtime on CPU: the encoder runs as an optimised (optionally int8) graph.

Tokenization and pooling are the torch backend's (the model's own sentence-transformers
modules, which are cheap); only the transformer forward pass moves to ONNX Runtime. The
torch encoder is used once, to export the graph (cached) and as the fp32 reference for the
fidelity guard, then its weights are released: one copy of the weights per model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from embedserve.backends import fidelity
from embedserve.backends.base import Backend, Batch, Fidelity, Outputs, Token, TokenIds
from embedserve.backends.heads import BgeM3Heads, sparse_rows
from embedserve.backends.onnx_export import (
    GraphCache,
    cache_key,
    export_encoder,
    open_session,
    optimize_graph,
    quantize_int8,
    quantize_within_fidelity,
)
from embedserve.backends.smoothing import (
    DEFAULT_ALPHA,
    channel_maxima,
    layer_norm_fed_inputs,
    smooth_graph,
)
from embedserve.backends.torch_backend import EXTRA_OUTPUTS, TorchBackend, model_outputs, physical_cores
from embedserve.errors import ModelLoadError
from embedserve.models.tasks import Task

if TYPE_CHECKING:
    # Imported for real by onnx_export, which first turns ONNX Runtime's telemetry off.
    import onnxruntime as ort

log = logging.getLogger(__name__)

_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The graph is the encoder up to its token states (their heads read token states), or for SPLADE
# the encoder, its MLM head and the pooling (a vocabulary-sized row per input).
ONNX_KINDS = ("sentence-transformer", "bge-m3", "splade", "multi-vector")
MULTIVECTOR = frozenset({Task.MULTIVECTOR})


class OnnxBackend(Backend):
    # One session.run per batch, no Python per layer: a batch of 1 x 14 tokens took 1.2 ms and
    # 22 x 14 took 15 ms (int8, one thread), so a batch costs ~11 tokens' worth. Planning with
    # 16 instead of the torch figure gave 10% more sentences/s (uniform texts, pools of 96,
    # padding 1.11 -> 1.04) in benchmarks/engine_limit-style runs.
    batch_overhead_tokens = 16

    def __init__(
        self, path: str | Path, *, threads: int = 0, dtype: str = "fp32", cache_dir: Path,
        quantization_target: float = 0.99,
    ):
        path = Path(path)
        self._start(path, threads, dtype, quantization_target)
        if self.kind.name not in ONNX_KINDS:
            raise ModelLoadError(
                f"the ONNX backend serves {' and '.join(ONNX_KINDS)} models so far, and this is a {self.kind.name} "
                "model: run it with --backend torch"
            )
        self.uses_roles = self._torch.uses_roles
        self._mv = self._torch.multivector_head
        self._splade = self.kind.name == "splade"
        if self._splade:
            check_splade_pooling(self._torch)
        key = self._graph_key(path, dtype, "splade-max-first" if self._splade else "encoder")
        self.cache = GraphCache(cache_dir)
        texts = fidelity.calibration_texts()
        # A multi-vector model has no pooled vector: it is judged token by token (on documents).
        self._by_tokens = self._mv is not None
        if self._by_tokens:
            self._calibration = self.tokenize_role(texts, truncate=True, role="document")
            self._reference = self._encode_calibration(self._torch.encode, MULTIVECTOR)
        else:
            self._calibration = self.tokenize(texts, truncate=True)
            self._reference = self._embed_calibration(self._torch.embed)
        extra = self._torch.info.tasks & EXTRA_OUTPUTS if not self._by_tokens else frozenset()
        reference_outputs = self._encode_calibration(self._torch.encode, extra) if extra else None
        self.cache_hit = self._open(key, dtype)
        self.info = replace(self._torch.info, backend="onnx", dtype=dtype, weights_bytes=self._graph_bytes)
        result = self._compare(f"onnx {dtype}", self.forward)
        if reference_outputs is not None:
            measured = fidelity.compare_outputs(self._encode_calibration(self.encode, extra), reference_outputs)
            result = replace(result, outputs=measured)
        self.info = replace(self.info, fidelity=result)
        self._torch.release_encoder()
        log.info("onnx %s graph %s (%s): %s", dtype, "from cache" if self.cache_hit else "built", key, result)

    def _start(self, path: Path, threads: int, dtype: str, quantization_target: float) -> None:
        """What every ONNX backend starts from: the torch model (the graph's source and the fp32
        reference), the graph's inputs, and the int8 choices not yet made."""
        if dtype not in ("fp32", "int8"):
            raise ValueError(f"the ONNX backend runs fp32 or int8 on CPU, not {dtype}")
        self._torch = TorchBackend(path, device="cpu", threads=threads)
        self.kind = self._torch.kind
        self.pad_id = self._torch.pad_id
        self._inputs = [name for name in _GRAPH_INPUTS if name in self._torch.model_input_names]
        self._threads = threads or physical_cores()
        self._quantization_target = quantization_target
        self.fp32_layers: list[str] = []
        self.smoothing_alpha: float | None = None

    def _graph_key(self, path: Path, dtype: str, graph: str) -> str:
        settings = {"dtype": dtype, "inputs": self._inputs, "graph": graph}
        if dtype == "int8":
            settings["quantization_target"] = self._quantization_target  # it decides which layers stay fp32
        return cache_key(path, settings)

    def _open(self, key: str, dtype: str) -> bool:
        """Load the cached graph, building it if missing; a corrupt entry is rebuilt once."""

        def build(folder: Path) -> None:
            raw, optimized = folder / "raw.onnx", folder / "optimized.onnx"
            self._export(raw)
            optimize_graph(raw, optimized)
            if dtype == "int8":
                choices = self._quantize(optimized, folder)
                (folder / "int8.json").write_text(json.dumps(choices))
                for scratch in (optimized, folder / "smoothed.onnx"):
                    scratch.unlink(missing_ok=True)
            else:
                optimized.rename(folder / "model.onnx")
            raw.unlink()

        folder, hit = self.cache.get_or_build(key, build)
        try:
            self._session = self._session_for(folder / "model.onnx")
        except Exception as exc:  # noqa: BLE001 - a broken cache entry must not stop the server
            log.warning("cached ONNX graph %s is unusable (%s); rebuilding it", folder, exc)
            self.cache.invalidate(key)
            folder, hit = self.cache.get_or_build(key, build)
            self._session = self._session_for(folder / "model.onnx")
        self._graph_bytes = (folder / "model.onnx").stat().st_size
        choices_file = folder / "int8.json"
        choices = json.loads(choices_file.read_text()) if choices_file.is_file() else {}
        self.fp32_layers = choices.get("fp32_layers", [])
        self.smoothing_alpha = choices.get("smoothing_alpha")
        return hit

    def _export(self, raw: Path) -> None:
        export_encoder(self._torch.transformer_model, self._inputs, raw, splade=self._splade)

    def _quantize(self, optimized: Path, folder: Path) -> dict:
        """Write the int8 graph to folder/model.onnx; returns the choices made on the way.

        Smoothing (see backends/smoothing.py) is kept only if the quantised graph comes out
        closer to the fp32 reference with it than without, on the calibration set; then the
        layers whose quantisation costs the most may stay fp32 (quantize_within_fidelity).
        """
        out = folder / "model.onnx"
        quantize_int8(optimized, out)
        source, alpha, mean_cosine = optimized, None, self._graph_mean_cosine(out)
        readers = layer_norm_fed_inputs(optimized)
        if readers:
            smoothed, probe = folder / "smoothed.onnx", folder / "probe.onnx"
            maxima = channel_maxima(optimized, readers, (self._feeds(batch) for batch in self._calibration_batches()))
            smooth_graph(optimized, smoothed, maxima, DEFAULT_ALPHA)
            quantize_int8(smoothed, probe)
            with_smoothing = self._graph_mean_cosine(probe)
            log.info("int8 calibration mean cosine: %.5f plain, %.5f smoothed", mean_cosine, with_smoothing)
            if with_smoothing > mean_cosine:
                probe.replace(out)
                source, alpha, mean_cosine = smoothed, DEFAULT_ALPHA, with_smoothing
            else:
                probe.unlink()
        kept = quantize_within_fidelity(source, out, self._graph_mean_cosine, self._quantization_target, measured=mean_cosine)
        return {"smoothing_alpha": alpha, "fp32_layers": kept}

    def _calibration_batches(self) -> list[Batch]:
        return [
            Batch.from_ids(self._calibration[start : start + 16], pad_id=self.pad_id)
            for start in range(0, len(self._calibration), 16)
        ]

    def _embed_calibration(self, embed) -> np.ndarray:
        return fidelity.embed_all(self._calibration, embed, self.pad_id)

    def _encode_calibration(self, encode, tasks: frozenset[Task]) -> Outputs:
        return fidelity.encode_all(self._calibration, encode, tasks, self.pad_id)

    def _compare(self, mode: str, run_graph) -> Fidelity:
        """How close a graph's outputs (`run_graph(batch)` -> its output) are to the fp32 reference."""
        if not self._by_tokens:
            candidate = self._embed_calibration(lambda batch: self.pool(batch, run_graph(batch)))
            return fidelity.compare(mode, "torch fp32", candidate, self._reference)
        outputs = self._encode_calibration(lambda batch, tasks: self.heads(batch, run_graph(batch), tasks), MULTIVECTOR)
        measured = fidelity.compare_outputs(outputs, self._reference)
        return Fidelity(mode, "torch fp32", measured["multivector_mean_cosine"], measured["multivector_min_cosine"],
                        len(self._calibration), measured)

    def _graph_mean_cosine(self, graph: Path) -> float:
        """How close a candidate graph's outputs are to the fp32 reference (mean cosine)."""
        session = self._session_for(graph)
        return self._compare("candidate", lambda batch: self._run(session, batch)).mean_cosine

    def _session_for(self, graph: Path) -> ort.InferenceSession:
        return open_session(graph, self._threads)

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        return self._torch.tokenize(texts, truncate=truncate)

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        return self._torch.wrap_ids(ids, truncate=truncate)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return self._torch.token_texts(ids)

    def tokens(self, texts: Sequence[str], *, add_special_tokens: bool) -> list[list[Token]]:
        return self._torch.tokens(texts, add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[TokenIds], *, skip_special_tokens: bool) -> list[str]:
        return self._torch.decode(ids, skip_special_tokens=skip_special_tokens)

    def tokenize_role(self, texts: Sequence[str], *, truncate: bool, role: str) -> list[TokenIds]:
        return self._torch.tokenize_role(texts, truncate=truncate, role=role)

    def limit_sequence_length(self, max_seq_length: int) -> None:
        self._torch.limit_sequence_length(max_seq_length)
        super().limit_sequence_length(self._torch.info.max_seq_length)

    def forward(self, batch: Batch) -> np.ndarray | dict[str, torch.Tensor]:
        return self._run(self._session, batch)

    def _run(self, session: ort.InferenceSession, batch: Batch) -> np.ndarray | dict[str, torch.Tensor]:
        """The graph's output; for a multi-vector model, the features its heads read (token states,
        the encoder's mask, where the query expansion is), each worked out once per batch."""
        if self._mv is None:
            return session.run(None, self._feeds(batch))[0]
        expansion = self._mv.expansion_positions(batch)
        mask = self._mv.encoder_mask(batch, expansion)  # expansion the model doesn't attend to is masked
        hidden = session.run(None, self._feeds(batch, mask.numpy()))[0]
        return {
            "token_embeddings": torch.from_numpy(hidden),
            "input_ids": torch.from_numpy(batch.input_ids),
            "attention_mask": mask,
            "query_expansion_positions": expansion,
        }

    def _feeds(self, batch: Batch, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask if mask is None else mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = batch.segment_ids()
        return feeds

    @property
    def m3_heads(self) -> BgeM3Heads | None:
        return self._torch.m3_heads

    def heads(self, batch: Batch, hidden: np.ndarray, tasks: frozenset[Task]) -> Outputs:
        if self._splade:
            return Outputs(sparse=sparse_rows(hidden))
        if self._mv is not None:
            return Outputs(multivector=self._mv.vectors(batch, hidden))
        return model_outputs(self, batch, hidden, tasks, lambda: hidden)

    def pool(self, batch: Batch, hidden: np.ndarray) -> np.ndarray:
        if self._splade:
            return hidden  # the graph pooled already: one row of term weights per input
        if self._torch.mean_pooling_only:
            # The model's own Pooling module computes exactly this; in numpy it costs a fifth
            # (0.03 vs 0.2 ms a batch, ~1.5% of the int8 forward), and no tensors are built.
            mask = batch.attention_mask.astype(np.float32)
            summed = np.matmul(mask[:, None, :], hidden)[:, 0]
            return summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        features = {
            "token_embeddings": torch.from_numpy(hidden),
            "attention_mask": torch.from_numpy(batch.attention_mask),
        }
        return self._torch.pool(batch, features)


def check_splade_pooling(torch_backend: TorchBackend) -> None:
    """The graph pools as SpladePooling's defaults do (max over tokens, relu): refuse any other."""
    pooling = next((m for m in torch_backend.pooling_modules if type(m).__name__ == "SpladePooling"), None)
    if pooling is None or len(torch_backend.pooling_modules) != 1:
        raise ModelLoadError("this sparse model has modules besides SpladePooling; run it with --backend torch")
    strategy, activation = getattr(pooling, "pooling_strategy", "max"), getattr(pooling, "activation_function", "relu")
    if (strategy, activation) != ("max", "relu"):
        raise ModelLoadError(f"the ONNX graph pools SPLADE as max/relu, this model as {strategy}/{activation}: use --backend torch")

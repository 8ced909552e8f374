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

import numpy as np
import onnxruntime as ort
import torch

from embedserve.backends import fidelity
from embedserve.backends.base import Backend, Batch, Fidelity, TokenIds
from embedserve.backends.onnx_export import (
    GraphCache,
    cache_key,
    export_encoder,
    optimize_graph,
    quantize_within_fidelity,
)
from embedserve.backends.torch_backend import TorchBackend, physical_cores

log = logging.getLogger(__name__)

_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The fp32 graph must give the reference's vectors: below this (min cosine on the calibration
# set) the approximate GELU is dropped and the graph rebuilt with the exact one.
FP32_GRAPH_MIN_COSINE = 0.99999


class OnnxBackend(Backend):
    def __init__(
        self, path: str | Path, *, threads: int = 0, dtype: str = "fp32", cache_dir: Path,
        quantization_target: float = 0.99,
    ):
        if dtype not in ("fp32", "int8"):
            raise ValueError(f"the ONNX backend runs fp32 or int8 on CPU, not {dtype}")
        path = Path(path)
        self._torch = TorchBackend(path, device="cpu", threads=threads)
        self.pad_id = self._torch.pad_id
        self._inputs = [name for name in _GRAPH_INPUTS if name in self._torch.model_input_names]
        self._threads = threads or physical_cores()
        self._quantization_target = quantization_target
        self.fp32_layers: list[str] = []
        key_settings = {"dtype": dtype, "inputs": self._inputs}
        if dtype == "int8":
            key_settings["quantization_target"] = quantization_target  # it decides which layers stay fp32
        key = cache_key(path, key_settings)
        self.cache = GraphCache(cache_dir)
        self._calibration = self.tokenize(fidelity.calibration_texts(), truncate=True)
        self._reference = self._embed_calibration(self._torch.embed)
        self.cache_hit = self._open(key, dtype)
        self.info = replace(self._torch.info, backend="onnx", dtype=dtype, weights_bytes=self._graph_bytes)
        result = fidelity.compare(f"onnx {dtype}", "torch fp32", self._embed_calibration(self.embed), self._reference)
        self.info = replace(self.info, fidelity=result)
        self._torch.release_encoder()
        log.info("onnx %s graph %s (%s): %s", dtype, "from cache" if self.cache_hit else "built", key, result)

    def _open(self, key: str, dtype: str) -> bool:
        """Load the cached graph, building it if missing; a corrupt entry is rebuilt once."""

        def build(folder: Path) -> None:
            raw, optimized = folder / "raw.onnx", folder / "optimized.onnx"
            export_encoder(self._torch.transformer_model, self._inputs, raw)
            if optimize_graph(raw, optimized, approximate_gelu=True):
                exactness = self._graph_fidelity(optimized)
                if exactness.min_cosine < FP32_GRAPH_MIN_COSINE:
                    log.info("FastGelu moves vectors (min cosine %.6f): keeping the exact GELU", exactness.min_cosine)
                    optimize_graph(raw, optimized, approximate_gelu=False)
            if dtype == "int8":
                kept = quantize_within_fidelity(
                    optimized, folder / "model.onnx", self._graph_mean_cosine, self._quantization_target
                )
                (folder / "fp32_layers.json").write_text(json.dumps(kept))
                optimized.unlink()
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
        layers = folder / "fp32_layers.json"
        self.fp32_layers = json.loads(layers.read_text()) if layers.is_file() else []
        return hit

    def _embed_calibration(self, embed) -> np.ndarray:
        return fidelity.embed_all(self._calibration, embed, self.pad_id)

    def _graph_fidelity(self, graph: Path) -> Fidelity:
        """How close a candidate graph's vectors are to the fp32 reference."""
        session = self._session_for(graph)
        candidate = self._embed_calibration(lambda batch: self.pool(batch, self._run(session, batch)))
        return fidelity.compare("candidate", "torch fp32", candidate, self._reference)

    def _graph_mean_cosine(self, graph: Path) -> float:
        return self._graph_fidelity(graph).mean_cosine

    def _session_for(self, graph: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def tokenize(self, texts: Sequence[str], *, truncate: bool) -> list[TokenIds]:
        return self._torch.tokenize(texts, truncate=truncate)

    def wrap_ids(self, ids: Sequence[TokenIds], *, truncate: bool) -> list[TokenIds]:
        return self._torch.wrap_ids(ids, truncate=truncate)

    def limit_sequence_length(self, max_seq_length: int) -> None:
        self._torch.limit_sequence_length(max_seq_length)
        super().limit_sequence_length(self._torch.info.max_seq_length)

    def forward(self, batch: Batch) -> np.ndarray:
        return self._run(self._session, batch)

    def _run(self, session: ort.InferenceSession, batch: Batch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(batch.input_ids)
        return session.run(None, feeds)[0]

    def pool(self, batch: Batch, hidden: np.ndarray) -> np.ndarray:
        features = {
            "token_embeddings": torch.from_numpy(hidden),
            "attention_mask": torch.from_numpy(batch.attention_mask),
        }
        return self._torch.pool(batch, features)

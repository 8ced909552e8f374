"""sentence-transformers / transformers on torch, CPU or CUDA.

The model is loaded with sentence-transformers so that its own module stack (Transformer,
Pooling, Dense, Normalize) and its config (max_seq_length, prompts) are honoured; which class
reads it (SentenceTransformer, SparseEncoder, MultiVectorEncoder, CrossEncoder) is what the
folder says it is (models/tasks.py). We run the first module as `forward` and the rest, minus
Normalize, as `pool`: normalisation is applied by the engine so that raw pooled vectors stay
available. For a SPLADE model `pool` is SpladePooling (a vocabulary-sized row); for BGE-M3 the
sparse and ColBERT heads (backends/heads.py) read the same forward pass's token states; a
multi-vector model's own modules run as its head (backends/multivector.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from embedserve.backends import compiled, cuda_graphs, fidelity, score_fidelity, shared_weights
from embedserve.backends.base import Backend, Batch, ModelInfo, Outputs, TokenIds
from embedserve.backends.heads import BgeM3Heads, sparse_rows
from embedserve.backends.model_config import label_names, multivector_similarity, pooling_name, usable_positions
from embedserve.backends.multivector import MultiVectorHead
from embedserve.backends.tokenization import HFTokenizer, HFTokenizerMethods
from embedserve.errors import ModelLoadError
from embedserve.models.tasks import ModelKind, Task, detect_kind

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share one core's units)."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        siblings = [int(line.split(":")[1]) for line in text.splitlines() if line.startswith("siblings")]
        cores = [int(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu cores")]
        if siblings and cores and siblings[0] > cores[0]:
            return max(1, available * cores[0] // siblings[0])
    except OSError:
        pass
    return max(1, available)


def avoid_per_shape_attention_plans() -> None:
    """Turn off cuDNN's scaled-dot-product attention on CUDA (process-wide).

    On an H100 with torch 2.11, SDPA in fp16/bf16 picks cuDNN, which builds an execution
    plan for every new (batch, length) shape: a forward pass of all-MiniLM-L6-v2 took
    ~82 ms on a shape seen for the first time and ~6 ms on one seen before. A server sees
    thousands of shapes, so served fp16 ran 5x slower than fp32. Flash and memory-efficient
    attention need no per-shape plan and take over.
    """
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        log.info("cuDNN attention disabled: it re-plans for every new batch shape")


EXTRA_OUTPUTS = frozenset({Task.SPARSE, Task.MULTIVECTOR})  # outputs beyond the dense vector, each with its own guard

def _loader(kind: ModelKind):
    import sentence_transformers as st

    return getattr(st, kind.loader)


class TorchBackend(HFTokenizerMethods, Backend):
    def __init__(
        self, path: str | Path, *, device: str = "auto", threads: int = 0, dtype: str = "fp32",
        kind: ModelKind | None = None, compile: str = "off", graphs: str = "off", max_batch_size: int = 64,
    ):
        from sentence_transformers.base.modules.normalize import Normalize

        path = Path(path)
        self.kind = kind = kind or detect_kind(path)
        self.device = pick_device(device)
        if self.device == "cpu":
            torch.set_num_threads(threads or physical_cores())
        elif self.device.startswith("cuda"):
            avoid_per_shape_attention_plans()
        try:
            st = _loader(kind)(str(path), device=self.device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a load error
            raise ModelLoadError(f"could not load model from {path}: {exc}") from exc
        st.eval()
        modules = list(st.children())
        self._encoder = modules[0]
        self._autocast: torch.dtype | None = None  # CPU bf16: matmuls in bf16, the rest fp32
        self._compile_mode = compile  # auto / on / off (backends/compiled.py)
        self._compiled = None  # the torch.compile'd encoder, when it serves (run-only once warmed)
        self._graphs: cuda_graphs.GraphRunner | None = None  # CUDA graphs per bucket, when they serve
        self._poolers = [m for m in modules[1:] if not isinstance(m, Normalize)]
        normalize = any(isinstance(m, Normalize) for m in modules[1:])
        pooling = next((pooling_name(m) for m in self._poolers if "pool" in type(m).__name__.lower()), "none")

        hf_tok = self._pair_tokenizer = st.tokenizer  # pairs: the tokenizer's own pair encoding (kept past release)
        config = getattr(self.transformer_model, "config", None)
        self._position_limit = usable_positions(config)
        limit = min(getattr(st, "max_seq_length", None) or self._position_limit, self._position_limit)
        self._tokenizer = HFTokenizer(hf_tok, int(limit), lowercase=bool(getattr(modules[0], "do_lower_case", False)))
        self.model_input_names = list(getattr(hf_tok, "model_input_names", ["input_ids", "attention_mask"]))
        self.pad_id = self._tokenizer.pad_id
        self._st = st
        self._m3: BgeM3Heads | None = None
        if kind.name == "bge-m3":
            self._m3 = BgeM3Heads(path, [getattr(hf_tok, f"{t}_token_id", None) for t in ("cls", "eos", "pad", "unk")])
            self._m3.check_hidden_size(int(config.hidden_size))
        self._mv: MultiVectorHead | None = None
        if kind.name == "multi-vector":
            self._mv = MultiVectorHead(st, self._position_limit)
            self.uses_roles = True
            limit = self._mv.max_seq_length
        dimension = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else None
        if kind.name == "cross-encoder":
            self._activation = st.activation_fn
        self.info = ModelInfo(
            dimension=int(dimension or 0),
            max_seq_length=int(limit),
            pooling=pooling,
            normalize=normalize,
            vocab_size=self._tokenizer.vocab_size,
            device=self.device,
            backend="torch",
            prompts=dict(getattr(st, "prompts", None) or {}),
            default_prompt_name=getattr(st, "default_prompt_name", None),
            tasks=kind.tasks,
            kind=kind.name,
            multivector_dimension=self._m3.colbert_dimension if self._m3 else self._mv.dimension if self._mv else None,
            score_labels=int(config.num_labels) if kind.name == "cross-encoder" else None,
            labels=label_names(config) if kind.name == "cross-encoder" else (),
            multivector_similarity=multivector_similarity(kind, st),
        )
        self._shared_bytes = 0
        if dtype != "fp32":
            self._reduce_precision(dtype)  # lowers, shares and compiles (where asked) in that order
        else:
            self._share_weights()
            if compile == "on":
                self._compile(self._calibration_seconds())
        if graphs != "off":
            self._capture_graphs(graphs, max_batch_size)
        weights = sum(p.numel() * p.element_size() for p in st.parameters())
        self.info = replace(self.info, weights_bytes=weights, shared_weights_bytes=self._shared_bytes)
        log.info("loaded %s on %s: %s", path, self.device, self.info)

    @property
    def m3_heads(self) -> BgeM3Heads | None:
        return self._m3

    @property
    def multivector_head(self) -> MultiVectorHead | None:
        return self._mv

    @property
    def pooling_modules(self) -> list[torch.nn.Module]:
        return list(self._poolers)

    @property
    def transformer_model(self) -> torch.nn.Module:
        """The underlying transformers model (what an ONNX export traces)."""
        return self._encoder.auto_model

    def _reduce_precision(self, dtype: str) -> None:
        """Lower the precision after measuring the fp32 reference (vectors and speed).

        On CUDA the whole encoder is cast. On CPU bf16 is mixed precision instead: only the
        Linear layers hold bf16 weights and run under autocast (AMX / AVX512-BF16 matmuls),
        while layer norms, softmax and GELU stay fp32. Measured on all-MiniLM-L6-v2 over
        4,721 texts: every vector within cosine 0.99991 of fp32 (a full bf16 cast: 0.99986
        over 3,763) at 2.3-2.9x the fp32 speed on a CPU with AMX. A cross-encoder is measured by
        the scores it gives the calibration pairs instead (backends/score_fidelity.py).
        """
        if self.kind.name == "cross-encoder":
            result, speedup = score_fidelity.measure_reduced_precision(
                self, dtype, lambda seconds: self._lower_precision(dtype, seconds)
            )
            self.info = replace(self.info, dtype=dtype, fidelity=result, speedup=round(speedup, 2))
            return
        sequences = self.tokenize(fidelity.calibration_texts(), truncate=True)
        reference = fidelity.embed_all(sequences, self.embed, self.pad_id)  # also the warm-up
        extra = self.info.tasks & EXTRA_OUTPUTS
        reference_outputs = fidelity.encode_all(sequences, self.encode, extra, self.pad_id) if extra else None
        fp32_seconds = self._time(sequences)
        self._lower_precision(dtype, lambda: self._time(sequences))
        fast = fidelity.embed_all(sequences, self.embed, self.pad_id)
        speedup = fp32_seconds / max(self._time(sequences), 1e-9)
        result = fidelity.compare(f"torch {dtype}", "torch fp32", fast, reference)
        if reference_outputs is not None:
            fast_outputs = fidelity.encode_all(sequences, self.encode, extra, self.pad_id)
            result = replace(result, outputs=fidelity.compare_outputs(fast_outputs, reference_outputs))
        self.info = replace(self.info, dtype=dtype, fidelity=result, speedup=round(speedup, 2))

    def _lower_precision(self, dtype: str, seconds: Callable[[], float]) -> None:
        """Lower the precision, then compile the encoder where the compile setting asks (auto: CPU
        bf16 only); `seconds()` times the calibration set, to decide whether compiling pays."""
        if self.device == "cpu" and dtype == "bf16":
            for module in self._encoder.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)
            self._autocast = torch.bfloat16
        else:
            self._encoder.to(TORCH_DTYPES[dtype])
        self._share_weights()
        if self._compile_mode == "on" or (self._compile_mode == "auto" and self._autocast is not None):
            self._compile(seconds)

    def _share_weights(self) -> None:
        """Point weights other loaded models hold identically (a LoRA adapter's base) at their copy;
        done before compiling, so compiled graphs are traced on the weights they will run on."""
        self._shared_bytes = shared_weights.share(self._st)

    def _calibration_seconds(self) -> Callable[[], float]:
        """A timer of one pass over the calibration set (pairs for a cross-encoder)."""
        if self.kind.name == "cross-encoder":
            pairs = score_fidelity.CalibrationPairs.tokenized(self)
            return lambda: pairs.seconds(lambda batch: self.encode(batch, frozenset({Task.SCORE})).scores)
        sequences = self.tokenize(fidelity.calibration_texts(), truncate=True)
        return lambda: self._time(sequences)

    def _compile(self, seconds: Callable[[], float]) -> None:
        """torch.compile the encoder, warm it on the calibration set and on one input, and keep it if
        it compiled and (auto) runs the calibration set at least compiled.MIN_SPEEDUP faster."""
        if self._mv is not None:  # its encoder mask is rebuilt per batch; not measured compiled yet
            if self._compile_mode == "on":
                raise ModelLoadError("--torch-compile on does not cover multi-vector models yet; use auto or off")
            return
        eager = compiled.best_of(seconds)
        self._compiled = compiled.compile_module(self._encoder)
        speedup, error = compiled.measure(eager, lambda: (seconds(), self.forward(self._one_input())), seconds)
        if error is not None and self._compile_mode == "on":
            raise ModelLoadError(f"torch.compile failed: {type(error).__name__}: {error}")
        if error is not None or (self._compile_mode == "auto" and speedup < compiled.MIN_SPEEDUP):
            log.info("keeping the eager encoder (compiled: %.2fx eager; auto needs %s)", speedup, compiled.MIN_SPEEDUP)
            self._compiled = None
        else:
            self._compiled = compiled.run_only(self._encoder)
        measured = round(speedup, 2) if error is None else None
        self.info = replace(self.info, compiled=self._compiled is not None, compile_speedup=measured)

    def _capture_graphs(self, mode: str, max_batch_size: int) -> None:
        """--cuda-graphs (backends/cuda_graphs.py): graph the encoder per bucket on CUDA, keep as measured."""
        if not self.device.startswith("cuda"):
            log.debug("--cuda-graphs %s has no effect on %s", mode, self.device)
            return
        reason = cuda_graphs.unsupported(self.kind.name, self._compiled is not None, self._autocast is not None)
        if reason is not None:
            if mode == "on":
                raise ModelLoadError(f"--cuda-graphs on cannot serve this model: {reason}; use auto or off")
            log.info("no CUDA graphs: %s", reason)
            return
        grid = cuda_graphs.buckets(max_batch_size, self.info.max_seq_length)
        runner, speedup = cuda_graphs.choose(
            mode,
            lambda: cuda_graphs.GraphRunner(self._encoder, self.features, self.pad_id, grid, precision=self._precision),
            lambda runner: setattr(self, "_graphs", runner),
            self._calibration_seconds(),
            lambda runner: cuda_graphs.compare(
                cuda_graphs.calibration_batches(self), self.forward, runner.forward, runner.output_keys
            ),
        )
        self.info = replace(self.info, cuda_graphs=runner is not None, cuda_graphs_speedup=speedup)

    def _one_input(self) -> Batch:
        """A batch of one input: dynamo gives size 1 its own graph, so warm-up compiles it too."""
        if self.kind.name == "cross-encoder":
            ids, types = self.tokenize_pairs([("warm-up query", "warm-up document")], truncate=True)
            return Batch.from_ids(ids, self.pad_id, type_ids=types)
        return Batch.from_ids(self.tokenize(["warm-up"], truncate=True), self.pad_id)

    def _time(self, sequences: list[TokenIds]) -> float:
        started = time.perf_counter()
        fidelity.embed_all(sequences, self.embed, self.pad_id)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def release_encoder(self) -> None:
        """Drop the torch encoder weights once another engine runs the forward pass."""
        self._encoder = None
        self._graphs = None
        self._st = None

    def limit_sequence_length(self, max_seq_length: int) -> None:
        limit = min(max_seq_length, self._position_limit)
        self._tokenizer.max_length = limit
        if self._st is not None:
            self._st.max_seq_length = limit
        super().limit_sequence_length(limit)

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        ids = self._on_device(batch.input_ids)
        feats = {"input_ids": ids, "attention_mask": self._on_device(batch.attention_mask)}
        if "token_type_ids" in self.model_input_names:
            if batch.token_type_ids is None:
                feats["token_type_ids"] = torch.zeros_like(ids)
            else:
                feats["token_type_ids"] = self._on_device(batch.token_type_ids)
        return feats

    def _on_device(self, array: np.ndarray) -> torch.Tensor:
        """On CUDA through pinned host memory (torch's caching host allocator keeps the block until the
        copy is done), copied without blocking: the host goes on while the copy runs on the stream."""
        tensor = torch.from_numpy(array)
        if self.device.startswith("cuda"):
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def activate_scores(self, logits: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._activation(torch.from_numpy(logits)).numpy()

    def tokenize_role(self, texts: Sequence[str], *, truncate: bool, role: str) -> list[TokenIds]:
        if self._mv is None:
            return self.tokenize(texts, truncate=truncate)
        return self._mv.tokenize(texts, truncate=truncate, role=role)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self._graphs is not None and (graphed := self._graphs.forward(batch)) is not None:
            return graphed  # the batch fit a bucket (else eager below)
        features = self.features(batch)
        expansion = None
        if self._mv is not None:
            expansion = self._mv.expansion_positions(batch)
            features["attention_mask"] = self._mv.encoder_mask(batch, expansion).to(self.device)
        with torch.inference_mode(), self._precision():
            out = (self._encoder if self._compiled is None else self._compiled)(features)
        if expansion is not None:
            out["query_expansion_positions"] = expansion.to(self.device)
        return out

    def _precision(self):
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=self._autocast)

    @property
    def mean_pooling_only(self) -> bool:
        """Whether pooling is exactly a masked mean of the token embeddings (nothing after it)."""
        return self.info.pooling == "mean" and len(self._poolers) == 1

    def pool(self, batch: Batch, hidden: dict[str, torch.Tensor]) -> np.ndarray:
        with torch.inference_mode():
            features = hidden
            for module in self._poolers:
                features = module(features)
            return features["sentence_embedding"].float().cpu().numpy()

    def heads(self, batch: Batch, hidden: dict[str, torch.Tensor], tasks: frozenset[Task]) -> Outputs:
        if self.kind.name == "splade":
            return Outputs(sparse=sparse_rows(self.pool(batch, hidden)))
        if self._mv is not None:
            return Outputs(multivector=self._mv.vectors(batch, hidden))
        if self.kind.name == "cross-encoder":
            return Outputs(scores=hidden["scores"].float().cpu().numpy())
        return model_outputs(self, batch, hidden, tasks, lambda: hidden["token_embeddings"].float().cpu().numpy())


def model_outputs(backend: Backend, batch: Batch, hidden, tasks: frozenset[Task], states) -> Outputs:
    """Dense from the model's pooling; BGE-M3's sparse and ColBERT from the token states
    (`states()` gives them as float32 numpy, computed only when a head needs them)."""
    out = Outputs()
    if Task.EMBED in tasks:
        out.dense = backend.pool(batch, hidden)
    m3: BgeM3Heads | None = getattr(backend, "m3_heads", None)
    if m3 is not None and (Task.SPARSE in tasks or Task.MULTIVECTOR in tasks):
        token_states = states()
        if Task.SPARSE in tasks:
            out.sparse = m3.sparse(batch, token_states)
        if Task.MULTIVECTOR in tasks:
            out.multivector = m3.colbert(batch, token_states)
    return out

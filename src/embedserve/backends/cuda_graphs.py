"""CUDA graphs of the torch backend's encoder, one per padded (batch size, length) bucket.

Why: a small batch on a GPU is bound by kernel launches, not arithmetic. Eager torch launches
every kernel of every layer from Python (~100 launches for a 6-layer BERT, each paying Python,
dispatcher and driver time), while a CUDA graph replays the whole captured forward pass with one
launch. A graph is fixed to the shapes it was captured with, so batches are padded up to a bucket:

- Buckets: batch sizes BATCH_SIZES x lengths LENGTHS, capped at --max-batch-size and the model's
  max_seq_length (the cap itself becomes the last bucket, so every batch the batcher may make up to
  the caps fits). A batch that fits no bucket (longer than LENGTHS[-1] tokens, more rows than the
  cap) runs eager, as before.
- Padding: the batch is padded to the smallest bucket that holds it (`pad_batch`): extra columns
  are padding tokens with attention mask 0, extra rows are all padding with attention mask 0. The
  mask keeps every real token from attending to a padding position, positions of real tokens do
  not move, and nothing in an encoder mixes batch rows, so the real rows' token states do not
  depend on the padding (an all-masked extra row may come out NaN; it is sliced off). Only the
  encoder call is graphed: its outputs are sliced back to the real [rows, length] (`cut`) and
  cloned out of the graph's static buffers before the poolers and heads run, so mean pooling, CLS,
  last-token, BGE-M3's sparse and ColBERT heads and a cross-encoder's scores (one row each) see
  exactly the tensors an eager pass of the unpadded batch gives, up to rounding.
- Not graphed: multi-vector models (their encoder mask is rebuilt per batch), SPLADE models (the
  encoder outputs vocabulary-sized logits per token: one bucket of 64 x 256 would hold ~1 GB of
  fp16 output), an encoder that runs torch.compile'd (--torch-compile on), and CPU autocast.
- Capture, the standard recipe: static input tensors per bucket, warm-up runs on the capture stream
  (cuBLAS sets up its workspace per stream; lazy initialisation happens outside the capture), then
  `torch.cuda.graph`. Buckets are captured largest first into one memory pool
  (`torch.cuda.graph_pool_handle()`), so the smaller graphs reuse the largest one's intermediate
  memory; that is safe because replays are serialised (below) and each graph's static outputs stay
  alive. The capture runs in "thread_local" error mode: a model loaded while other models serve
  from other threads must not turn their CUDA calls into capture errors. transformers builds the
  full attention mask while a stream captures (`is_tracing` looks at
  `torch.cuda.is_current_stream_capturing()`), instead of its eager shortcut that drops an
  all-ones mask after looking at the values.
- Serving: the inference workers share one runner. A lock serialises copy-in, replay and the clone
  of the outputs; a caller on another CUDA stream than the previous replay first waits for that
  stream, so two replays (which share the pool) never overlap on the GPU either.

The choice (`choose`, --cuda-graphs): `auto` captures on CUDA at load and keeps the graphs only if
the calibration set runs at least MIN_SPEEDUP faster with them than eager (best of two passes each)
and the outputs agree with eager on the calibration batches and on slices of them with fewer rows
(so extra all-padding rows are part of the check; `Agreement`); any exception while capturing or
measuring leaves the eager encoder under `auto`. `on` captures or refuses the model. `off` never.

torch.compile(mode="reduce-overhead") is the other way to get graphs, and is not tried here: it
compiles with Inductor first (10-25 s at load and a C++/Triton toolchain, see backends/compiled.py),
its CUDA graph trees are per thread (our inference workers are threads, and a graph tree recorded
in one thread is not replayed from another), its outputs are overwritten by the next replay
unless cloned, and with dynamic shapes it records a graph per new shape while serving. Measuring
it against these hand-made graphs is left for a session with a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embedserve.backends import compiled
from embedserve.backends.base import Backend, Batch
from embedserve.errors import ModelLoadError

log = logging.getLogger(__name__)

Bucket = tuple[int, int]  # (batch size, length)
Features = dict[str, torch.Tensor]

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
LENGTHS = (16, 32, 64, 128, 256)
WARMUP_RUNS = 3
MIN_SPEEDUP = 1.05  # what auto asks of the graphs over eager on the calibration set
ROW_MIN_COSINE = 0.99999  # each row's masked sum of token states (or its score vector), graphs vs eager
TOKEN_MIN_COSINE = 0.9999  # each real token's state (what token-level heads read)
SCORE_TOLERANCE = 0.01  # one-wide outputs (a cross-encoder's logit): |graph - eager| <= this x max(1, |eager|)
CHECK_ROWS = (1, 3)  # besides each calibration batch, its first rows alone (extra all-padding rows)


def capped(sizes: Sequence[int], limit: int) -> tuple[int, ...]:
    """The sizes below `limit`, then `limit` itself where it is within the largest size."""
    if limit >= sizes[-1]:
        return tuple(sizes)
    return (*(s for s in sizes if s < limit), limit)


def buckets(max_batch_size: int, max_seq_length: int) -> list[Bucket]:
    return [(b, n) for b in capped(BATCH_SIZES, max_batch_size) for n in capped(LENGTHS, max_seq_length)]


def bucket_for(rows: int, length: int, grid: Iterable[Bucket]) -> Bucket | None:
    """The smallest bucket (fewest padded tokens) holding `rows` x `length`, or None."""
    fits = [b for b in grid if b[0] >= rows and b[1] >= length]
    return min(fits, key=lambda b: (b[0] * b[1], b)) if fits else None


def pad_batch(batch: Batch, bucket: Bucket, pad_id: int) -> Batch:
    """The batch padded to the bucket: extra columns and extra rows are padding with mask 0."""
    rows, length = batch.input_ids.shape
    size = bucket
    if rows > size[0] or length > size[1]:
        raise ValueError(f"a batch of {rows} x {length} does not fit the bucket {size}")
    ids = np.full(size, pad_id, dtype=np.int64)
    mask = np.zeros(size, dtype=np.int64)
    ids[:rows, :length] = batch.input_ids
    mask[:rows, :length] = batch.attention_mask
    types = None
    if batch.token_type_ids is not None:
        types = np.zeros(size, dtype=np.int64)
        types[:rows, :length] = batch.token_type_ids
    return Batch(ids, mask, types)


def cut(value: Any, rows: int, length: int, bucket_length: int) -> Any:
    """An encoder output of a padded batch sliced back to the real rows (and, for per-token outputs
    [batch, length, ...], to the real length)."""
    if isinstance(value, (tuple, list)):
        return type(value)(cut(v, rows, length, bucket_length) for v in value)
    if value.dim() >= 3 and value.shape[1] == bucket_length:
        return value[:rows, :length]
    return value[:rows]


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for v in value for t in _tensors(v)] if isinstance(value, (tuple, list)) else [value]


def _clone(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value.clone()


def _copy_into(static: Any, fresh: Any) -> None:
    for target, source in zip(_tensors(static), _tensors(fresh), strict=True):
        target.copy_(source)


def output_keys(inputs: Mapping[str, Any], outputs: Mapping[str, Any], rows: int) -> list[str]:
    """The encoder's outputs (what it added to the features), checked to be tensors of the batch."""
    keys = [k for k in outputs if k not in inputs or outputs[k] is not inputs[k]]
    for key in keys:
        value = outputs[key]
        if not isinstance(value, (torch.Tensor, tuple, list)) or not all(
            isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == rows for t in _tensors(value)
        ):
            raise ValueError(f"the encoder output {key!r} is not a tensor per row; it cannot be sliced back")
    return keys


Capture = Callable[[Callable[[Features], Mapping[str, Any]], Features], tuple[Callable[[], None], Mapping[str, Any]]]


class CudaCapture:
    """Captures one CUDA graph per call, every graph in one memory pool and on one stream."""

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()

    def __call__(self, fn, inputs: Features):
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(WARMUP_RUNS):
                fn(dict(inputs))
        torch.cuda.current_stream().wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            outputs = fn(dict(inputs))
        torch.cuda.synchronize()
        return graph.replay, outputs


def eager_capture(fn, inputs: Features):
    """A stand-in for CudaCapture that runs anywhere (tests on CPU): replay recomputes the encoder on
    the static inputs and writes its outputs into the static outputs, as a graph replay does."""
    outputs = dict(fn(dict(inputs)))

    def replay() -> None:
        fresh = fn(dict(inputs))
        for key in keys:
            _copy_into(outputs[key], fresh[key])

    keys = [k for k in outputs if k not in inputs or outputs[k] is not inputs[k]]
    return replay, outputs


@dataclass
class _Graph:
    bucket: Bucket
    inputs: Features
    replay: Callable[[], None]
    outputs: dict[str, Any]  # the static outputs, sliced back per batch


class GraphRunner:
    """The encoder's graphs, one per bucket, and the padding and slicing around them.

    `encoder(features) -> dict` is the encoder call (sentence-transformers' Transformer module);
    `features(batch) -> dict` puts a batch's tensors on the device (the backend's `features`).
    """

    def __init__(
        self,
        encoder: Callable[[Features], Mapping[str, Any]],
        features: Callable[[Batch], Features],
        pad_id: int,
        grid: Sequence[Bucket],
        *,
        capture: Capture | None = None,
        precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self._features = features
        self._pad_id = pad_id
        self._lock = threading.Lock()
        self._last_stream = None
        self.replays = 0  # batches served by a graph (tests and logs)
        self.grid = sorted(grid)
        self._device: torch.device | None = None  # the GPU the static tensors live on (None: not on CUDA)
        self._graphs: dict[Bucket, _Graph] = {}
        self.output_keys: list[str] = []
        with torch.inference_mode(), precision():
            for bucket in sorted(self.grid, key=lambda b: b[0] * b[1], reverse=True):  # largest first: pool reuse
                inputs = {k: v.clone() for k, v in features(self._dummy(bucket)).items()}
                self._device = next((t.device for t in inputs.values() if t.is_cuda), None)
                with self._on_gpu():
                    capture = capture or CudaCapture()  # its stream on the model's GPU (cuda:N)
                    replay, outputs = capture(encoder, inputs)
                keys = output_keys(inputs, outputs, bucket[0])
                if self.output_keys and keys != self.output_keys:
                    raise ValueError(f"the encoder outputs {keys} for {bucket}, {self.output_keys} for others")
                self.output_keys = keys
                self._graphs[bucket] = _Graph(bucket, inputs, replay, {k: outputs[k] for k in keys})

    def _dummy(self, bucket: Bucket) -> Batch:
        """Capture-time contents (a graph records kernels, not data), padded like a served batch: a
        padding column and an all-padding row, so that the warm-up takes the masked attention path
        the capture records (transformers drops an all-ones mask when not capturing, and the kernels
        it would pick then differ) and every kernel the capture uses has run once before it."""
        rows, length = bucket
        mask = np.ones(bucket, dtype=np.int64)
        if length > 1:
            mask[:, -1] = 0
        if rows > 1:
            mask[-1] = 0
        return Batch(np.full(bucket, self._pad_id, dtype=np.int64), mask, np.zeros(bucket, dtype=np.int64))

    def bucket_for(self, rows: int, length: int) -> Bucket | None:
        return bucket_for(rows, length, self.grid)

    def forward(self, batch: Batch) -> dict[str, Any] | None:
        """The encoder's outputs for the batch from its bucket's graph, as an eager call of the
        encoder on the unpadded batch gives them (with the batch's own features); None when the
        batch fits no bucket (run it eager)."""
        rows, length = batch.input_ids.shape
        bucket = self.bucket_for(rows, length)
        if bucket is None:
            return None
        graph = self._graphs[bucket]
        features = self._features(pad_batch(batch, bucket, self._pad_id))
        with torch.inference_mode(), self._on_gpu():
            with self._lock:
                self._after_last_replay()
                for key, static in graph.inputs.items():
                    static.copy_(features[key], non_blocking=True)
                graph.replay()
                outputs = {k: _clone(cut(v, rows, length, bucket[1])) for k, v in graph.outputs.items()}
                self.replays += 1
            real = {k: v[:rows, :length] for k, v in features.items()}
        return {**real, **outputs}

    def _on_gpu(self) -> contextlib.AbstractContextManager:
        """The model's GPU as the current device (current_stream, new streams: cuda:N's, not cuda:0's)."""
        return torch.cuda.device(self._device) if self._device is not None else contextlib.nullcontext()

    def _after_last_replay(self) -> None:
        """Order this replay after the previous one on the GPU when it ran on another stream (the
        graphs share one memory pool); on the same stream the order is already kept."""
        if self._device is None:
            return
        stream = torch.cuda.current_stream()
        if self._last_stream is not None and self._last_stream != stream:
            stream.wait_stream(self._last_stream)
        self._last_stream = stream


@dataclass(frozen=True)
class Agreement:
    """How close graph outputs are to eager ones, worst case over the checked batches."""

    row_min_cosine: float = 1.0
    token_min_cosine: float = 1.0
    max_score_error: float = 0.0
    batches: int = 0

    def failures(self) -> list[str]:
        found = []
        if not self.row_min_cosine >= ROW_MIN_COSINE:
            found.append(f"row cosine {self.row_min_cosine:.6f} < {ROW_MIN_COSINE}")
        if not self.token_min_cosine >= TOKEN_MIN_COSINE:
            found.append(f"token cosine {self.token_min_cosine:.6f} < {TOKEN_MIN_COSINE}")
        if not self.max_score_error <= SCORE_TOLERANCE:
            found.append(f"score error {self.max_score_error:.6f} > {SCORE_TOLERANCE}")
        if self.batches == 0:
            found.append("no calibration batch fits a bucket")
        return found


def _min(values: torch.Tensor, start: float) -> float:
    return min(start, float(torch.nan_to_num(values, nan=-1.0).min())) if values.numel() else start


def compare(
    batches: Iterable[Batch], eager: Callable[[Batch], Mapping[str, Any]], graphs: Callable[[Batch], Mapping[str, Any] | None],
    keys: Sequence[str],
) -> Agreement:
    """Graph outputs against eager outputs of the same batches, per output in `keys`: per-token
    outputs by each real token's cosine and each row's (masked sum of tokens) cosine, per-row
    vectors by their cosine, one-wide outputs (scores) by their error relative to max(1, |eager|)."""
    rows_cos, token_cos, score_err, count = 1.0, 1.0, 0.0, 0
    cosine = torch.nn.functional.cosine_similarity
    for batch in batches:
        got = graphs(batch)
        if got is None:
            continue
        ref = eager(batch)
        count += 1
        mask = torch.from_numpy(batch.attention_mask).bool()
        for key in keys:
            for e, g in zip(_tensors(ref[key]), _tensors(got[key]), strict=True):
                e, g = e.float().cpu(), g.float().cpu()
                if e.shape != g.shape:
                    raise ValueError(f"{key}: graph shape {tuple(g.shape)}, eager {tuple(e.shape)}")
                if e.dim() >= 3:
                    token_cos = _min(cosine(e, g, dim=-1)[mask], token_cos)
                    m = mask.unsqueeze(-1).float()
                    rows_cos = _min(cosine((e * m).sum(1), (g * m).sum(1), dim=-1), rows_cos)
                elif e.shape[-1] > 1:
                    rows_cos = _min(cosine(e, g, dim=-1), rows_cos)
                else:
                    error = torch.nan_to_num((g - e).abs() / e.abs().clamp(min=1.0), nan=float("inf"))
                    score_err = max(score_err, float(error.max()))
    return Agreement(rows_cos, token_cos, score_err, count)


def first_rows(batch: Batch, n: int) -> Batch:
    """The batch's first `n` rows, cut to the longest of them."""
    length = int(batch.attention_mask[:n].sum(axis=1).max())
    types = batch.token_type_ids[:n, :length] if batch.token_type_ids is not None else None
    return Batch(batch.input_ids[:n, :length], batch.attention_mask[:n, :length], types)


def calibration_batches(backend: Backend) -> list[Batch]:
    """The calibration set in the padded batches the timing runs (pairs for a cross-encoder), then the
    first rows of each alone (a bucket with extra all-padding rows)."""
    from embedserve.backends import fidelity, score_fidelity

    if backend.info.kind == "cross-encoder":
        batches = score_fidelity.CalibrationPairs.tokenized(backend).batches
    else:
        sequences = sorted(backend.tokenize(fidelity.calibration_texts(), truncate=True), key=len)
        batches = [Batch.from_ids(sequences[i : i + 16], backend.pad_id) for i in range(0, len(sequences), 16)]
    return batches + [first_rows(b, n) for b in batches for n in CHECK_ROWS if n < b.size]


def unsupported(kind: str, compiled_encoder: bool, autocast: bool) -> str | None:
    """Why this model's encoder is not graphed, or None."""
    if kind == "multi-vector":
        return "a multi-vector model's encoder mask is rebuilt per batch"
    if kind == "splade":
        return "a SPLADE model's encoder outputs vocabulary-sized logits per token (too much static memory per bucket)"
    if compiled_encoder:
        return "the encoder runs torch.compile'd (--torch-compile on)"
    if autocast:
        return "the encoder runs under autocast"
    return None


def choose(
    mode: str,
    build: Callable[[], GraphRunner],
    serve: Callable[[GraphRunner | None], None],
    seconds: Callable[[], float],
    check: Callable[[GraphRunner], Agreement],
) -> tuple[GraphRunner | None, float | None]:
    """Capture, check and time the graphs (`mode` auto or on): (the runner if it serves, the measured
    speed-up over eager or None). `serve(runner)` makes the backend's forward use it (None: eager);
    `seconds()` times a pass over the calibration set through that forward. Under `on` a failure
    or a disagreement refuses the model (ModelLoadError); under `auto` the eager encoder stays."""
    try:
        eager = compiled.best_of(seconds)
        runner = build()
        agreement = check(runner)
        problems = agreement.failures()
        speedup = None
        if not problems:
            serve(runner)
            speedup = eager / max(compiled.best_of(seconds), 1e-9)
    except Exception as exc:  # capture can fail in many ways (an op that syncs, an unsupported kernel); eager works
        serve(None)
        if mode == "on":
            raise ModelLoadError(f"CUDA graphs failed: {type(exc).__name__}: {exc}") from exc
        log.warning("CUDA graphs failed (%s: %s); keeping the eager encoder", type(exc).__name__, exc)
        return None, None
    if problems:
        serve(None)
        if mode == "on":
            raise ModelLoadError(f"CUDA graphs change the outputs: {'; '.join(problems)}")
        log.warning("CUDA graphs change the outputs (%s); keeping the eager encoder", "; ".join(problems))
        return None, None
    if mode == "auto" and speedup < MIN_SPEEDUP:
        serve(None)
        log.info("keeping the eager encoder (CUDA graphs: %.2fx eager; auto needs %s)", speedup, MIN_SPEEDUP)
        return None, round(speedup, 2)
    log.info("CUDA graphs serve %d buckets (%.2fx eager on the calibration set; %s)", len(runner.grid), speedup, agreement)
    return runner, round(speedup, 2)

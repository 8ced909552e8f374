"""Quantised embedding types (Cohere's `embedding_types`), with per-model int8/uint8 calibration.

The values are exactly sentence-transformers' `quantize_embeddings` (ST 6.3 util/quantization.py),
so an index built with ST's quantisation and one filled from this server agree:

- `int8` / `uint8`: per dimension a (min, max) range; `steps = (max - min) / 255` (a zero step
  counts as 1); `q = clip(floor((x - min) / steps), 0, 255)`; uint8 = q, int8 = q - 128. All in
  float32, as ST computes it.
- `binary` / `ubinary`: one bit per dimension, `x > 0`, packed eight to a byte (`np.packbits`,
  first dimension in the high bit); ubinary is the byte, binary the byte - 128. The dimension
  must be a multiple of 8, else the last byte would hold bits that aren't there (400).
- `base64`: the float32 vector's little-endian bytes, base64-encoded (as OpenAI's `base64`).
- `float`: the vector itself.

Why calibration, and on what. Quantising one request's vectors by their own min/max (ST's
fallback) would give the same text different int8 codes in different requests, and a single
vector can't be quantised at all. So the ranges are a property of the model: the package's
calibration texts (backends/fidelity.py, the set the fidelity guard also uses) are embedded once
per loaded model through the service, as *documents* (the model's document prefix: what an
index holds, and the side int8 is usually stored for), with the model's own normalisation, and
the per-dimension min/max kept. With a Matryoshka cut (`dimensions`) the cut and renormalised
calibration vectors give the ranges, computed and kept per dimension. Values outside the range
are clipped, as in ST.

The ranges are kept per `LoadedModel` object (weakly): a model unloaded and loaded again is a
new object and is calibrated afresh, and an unloaded model's ranges go with it. Concurrent first
requests share one calibration; a failed one (a full queue, a model unloaded meanwhile) is not
kept, so the next request tries again. No FastAPI here: routes call `quantize` and
`CALIBRATIONS.ranges`.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np

from embedserve.backends.fidelity import calibration_texts
from embedserve.engine.pending import DENSE
from embedserve.errors import BadRequest

if TYPE_CHECKING:
    from embedserve.engine.model_pool import LoadedModel
    from embedserve.engine.service import EmbeddingService

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
EMBEDDING_TYPES: tuple[str, ...] = ("float", "int8", "uint8", "binary", "ubinary", "base64")
CALIBRATED = frozenset({"int8", "uint8"})  # the types that need a model's ranges
PACKED = frozenset({"binary", "ubinary"})  # the types that pack 8 dimensions to a byte
CALIBRATION_INPUT_TYPE = "document"


def needs_ranges(kinds: Iterable[str]) -> bool:
    return any(kind in CALIBRATED for kind in kinds)


def check_packable(kinds: Iterable[str], dimension: int, *, param: str = "embedding_types") -> None:
    """400 when a bit-packed type is asked for vectors whose length is not a multiple of 8."""
    packed = sorted(PACKED.intersection(kinds))
    if packed and dimension % 8:
        raise BadRequest(
            f"{' and '.join(packed)} embeddings pack 8 dimensions to a byte: the dimension must be a multiple "
            f"of 8, and it is {dimension}",
            param=param,
        )


def quantize(vectors: np.ndarray, kind: str, ranges: np.ndarray | None = None) -> np.ndarray | list[str]:
    """`vectors` (float32 [n, dim]) as one embedding type; `ranges` ([2, dim]: min, max) for int8/uint8."""
    if kind == "float":
        return vectors
    if kind == "base64":
        little = vectors.astype("<f4", copy=False)
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    if kind in CALIBRATED:
        if ranges is None:
            raise ValueError(f"{kind} needs calibration ranges")
        codes = scalar_codes(vectors.astype(np.float32, copy=False), ranges)
        return codes.astype(np.uint8) if kind == "uint8" else (codes - 128).astype(np.int8)
    if kind in PACKED:
        check_packable((kind,), vectors.shape[1])
        packed = np.packbits(vectors > 0, axis=-1)
        return packed if kind == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown embedding type {kind!r}")


def scalar_codes(vectors: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The 0..255 bucket of each value (float32), exactly as ST's `quantize_embeddings` computes it."""
    ranges = ranges.astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    return np.clip(np.floor((vectors - starts) / steps), 0, 255)


def ranges_of(vectors: np.ndarray) -> np.ndarray:
    """Per-dimension (min, max) of calibration vectors, as ST's `_get_quantization_ranges`: [2, dim] float32."""
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32)


class Calibrations:
    """int8/uint8 ranges per loaded model and output dimension, each computed once, on demand."""

    def __init__(self) -> None:
        # LoadedModel -> {dimensions (None: the model's own): ranges}. Weak: an unloaded model's go with it.
        self._ranges: weakref.WeakKeyDictionary[LoadedModel, dict[int | None, np.ndarray]] = weakref.WeakKeyDictionary()
        self._pending: dict[tuple[LoadedModel, int | None], asyncio.Future[np.ndarray]] = {}
        self.runs = 0  # calibrations started (read by tests and nothing else)

    def cached(self, model: LoadedModel, dimensions: int | None) -> np.ndarray | None:
        return self._ranges.get(model, {}).get(dimensions)

    async def ranges(self, service: EmbeddingService, model: LoadedModel, dimensions: int | None) -> np.ndarray:
        """The model's ranges for vectors cut to `dimensions` (None: uncut), calibrating on first use.

        `dimensions` must be what the request's vectors were finished with, so the calibration
        vectors are cut and renormalised the same way. The calibration is shielded: a client that
        disconnects leaves it running for the others (and for the next request).
        """
        known = self.cached(model, dimensions)
        if known is not None:
            return known
        key = (model, dimensions)
        future = self._pending.get(key)
        if future is None:
            self.runs += 1
            future = asyncio.ensure_future(self._calibrate(service, model, dimensions))
            self._pending[key] = future
            future.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(future)

    def _settle(self, key: tuple[LoadedModel, int | None], done: asyncio.Future[np.ndarray]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if done.cancelled() or done.exception() is not None:  # retrieved: never "exception was never retrieved"
            return
        model, dimensions = key
        self._ranges.setdefault(model, {})[dimensions] = done.result()

    @staticmethod
    async def _calibrate(service: EmbeddingService, model: LoadedModel, dimensions: int | None) -> np.ndarray:
        """Embed the calibration texts through the service (queued like any request, in requests no
        larger than --max-inputs), always truncated: a calibration text never fails for length."""
        texts = calibration_texts()
        step = max(1, service.settings.max_inputs)
        rows = []
        for start in range(0, len(texts), step):
            result = await service.encode(
                model.id, texts[start : start + step], DENSE,
                dimensions=dimensions, input_type=CALIBRATION_INPUT_TYPE, truncate=True,
            )
            rows.append(result.dense)
        return ranges_of(np.concatenate(rows))


CALIBRATIONS = Calibrations()

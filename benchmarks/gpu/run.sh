#!/usr/bin/env bash
# The device run (H200): from the repo root, `bash .gpu/run.sh`. Everything it prints is also
# in $OUT/gpu.log ($OUT/server.log: the served check's server). Every step runs whatever the
# ones before it did, under its own time limit, all inside BUDGET seconds; the summary at the
# end gives each step's exit status (124 = its time limit, "skipped" = no budget left).
#
# Rehearsal on a CPU: PY=/path/to/python3.12 OUT=/tmp/gpu-out bash .gpu/run.sh
# (PY: the python to use, python3 by default; SITE: where the wheels go, /tmp/site by default.)
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/gpu-out}
export PY=${PY:-python3}
export SITE=${SITE:-/tmp/site}
export PORT=${PORT:-8300}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"

T0=$SECONDS
RESULTS=()

# step NAME LIMIT CMD...: run CMD under min(LIMIT, what is left of BUDGET), record its exit status.
step() {
    local name=$1 limit=$2 left started rc
    shift 2
    left=$((BUDGET - (SECONDS - T0) - 5))
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== [t=$((SECONDS - T0))s] $name (limit ${limit}s): $*"
    if [ "$limit" -lt 10 ]; then
        echo "=== $name: skipped, no budget left"
        RESULTS+=("$name=skipped")
        return
    fi
    started=$SECONDS
    timeout -k 10 "$limit" "$@"
    rc=$?
    echo
    echo "=== $name: exit $rc in $((SECONDS - started))s"
    RESULTS+=("$name=$rc")
}

main() {
    echo "=== gpu run $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), $(nproc) cores, in $PWD"
    git log -1 --format='=== HEAD %h %s' 2>/dev/null
    git status --short 2>/dev/null | sed 's/^/=== changed: /' | head -40
    nvidia-smi -L || echo "(nvidia-smi -L failed)"

    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu/whl/*.whl
    export PYTHONPATH=$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    fallback=$("$PY" .gpu/check_deps.py "$SITE" --fallback .gpu/whl-fallback)
    if [ -n "$fallback" ]; then
        # shellcheck disable=SC2086
        step fallback-wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" $fallback
    fi
    step restore-model 60 "$PY" .gpu/restore_model.py "$SITE"
    step check-deps 30 "$PY" .gpu/check_deps.py "$SITE"
    "$PY" - <<'EOF'
import platform, sys
import torch
print(f"=== python {platform.python_version()} at {sys.executable}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, available={torch.cuda.is_available()}", end="")
print(f", device 0: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
EOF
    step verify-model 90 "$PY" .gpu/verify_model.py

    if [ "${SWEEP:-0}" = 1 ]; then  # issue 16's table: SWEEP=1 BUDGET=560 bash .gpu/run.sh (one 600 s call)
        step gpu-sweep 450 "$PY" benchmarks/gpu_sweep.py --device cuda --budget 420 --out "$OUT/gpu_sweep.json"
    else
        step 1-tests-gpu 200 "$PY" -m pytest -q -ra tests/gpu
        step 2-tests-engine 120 "$PY" -m pytest -q -ra tests/unit/engine tests/unit/api/test_request_lifecycle.py
        step 3-served 150 bash .gpu/served_check.sh
    fi

    echo
    echo "=== summary after $((SECONDS - T0))s: ${RESULTS[*]}"
}

main 2>&1 | tee "$OUT/gpu.log"

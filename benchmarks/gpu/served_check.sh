#!/usr/bin/env bash
# Step 3 of .gpu/run.sh: a real server on the default model (`auto`: CUDA fp16 on a GPU, the CPU
# mode here), its /model/info, then benchmarks/overload.py three times against a queue of 8.
# Needs PY, PORT, OUT and PYTHONPATH from run.sh. Exit status: 0 only if every part worked.
set -u
PY=${PY:-python3}
PORT=${PORT:-8300}
OUT=${OUT:-/tmp/gpu-out}
URL=http://127.0.0.1:$PORT
CACHE=$(mktemp -d /tmp/embedserve-cache.XXXXXX)   # a fresh cache: nothing exported earlier is reused
LOG=/tmp/embedserve-server.log   # whole (an access line per request: may be large); $OUT/server.log gets its head and tail
rc=0
pid=

stop_server() {
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then echo "served: server still up 40 s after SIGTERM: SIGKILL"; kill -KILL "$pid"; rc=1; fi
    fi
    wait "$pid" 2>/dev/null
    echo "served: server exited with $? (143/0 = stopped by SIGTERM)"
    pid=
}
keep_log() {
    stop_server
    { head -n 300 "$LOG"; echo "... ($(wc -l <"$LOG") lines in all) ..."; tail -n 300 "$LOG"; } >"$OUT/server.log" 2>/dev/null
}
trap keep_log EXIT

echo "served: starting: $PY -m embedserve serve --host 127.0.0.1 --port $PORT --max-queue 8 (log: $LOG, head and tail in $OUT/server.log)"
start=$SECONDS
EMBEDSERVE_CACHE_DIR=$CACHE "$PY" -m embedserve serve --host 127.0.0.1 --port "$PORT" --max-queue 8 >"$LOG" 2>&1 &
pid=$!

"$PY" - "$URL" "$pid" <<'EOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 150
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("served: the server exited before /ready")
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.25)
sys.exit("served: not ready after 150 s")
EOF
ready=$?
echo "served: /ready -> $([ $ready = 0 ] && echo 200 || echo 'NOT READY') after $((SECONDS - start)) s"
if [ $ready != 0 ]; then
    echo "--- server log (last 60 lines)"; tail -n 60 "$LOG"
    exit 1
fi

"$PY" - "$URL" <<'EOF' || rc=1
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/model/info", timeout=30) as r:
    info = json.load(r)
keys = ("model_name", "source", "backend", "dtype", "device", "fidelity", "speedup_vs_fp32", "load_seconds")
print("served: /model/info", json.dumps({k: info.get(k) for k in keys}))
EOF

overload() {
    echo "served: overload $*"
    timeout -k 5 90 "$PY" benchmarks/overload.py --url "$URL" "$@" || { echo "served: overload $* exited $?"; rc=1; }
}
overload --connections 8 --seconds 10
overload --connections 256 --seconds 15 --retry-after honour
overload --connections 256 --seconds 15 --retry-after ignore

kill -0 "$pid" 2>/dev/null || { echo "served: the server died during the overload runs"; rc=1; }
stop_server
echo "served: server log: $(wc -l <"$LOG") lines, $(grep -c '"level":"info"' "$LOG") at info; the others (first 40):"
grep -v '"level":"info"' "$LOG" | head -n 40 | cut -c1-600
echo "served: the server log's first 15 lines:"
head -n 15 "$LOG" | cut -c1-600
rm -rf "$CACHE"
exit $rc

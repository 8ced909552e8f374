"""Ray Serve vs the plain server on one box (issue 17; docs/scale-out.md "Online: Ray Serve").

Starts, one at a time, `embedserve serve` (plain), `embedserve serve --ray --replicas 1` and
`--ray --replicas 2` (each --ray run starts and stops its own local Ray), and measures each with
benchmarks/loadgen.py on three workloads:
  bulk:   4 clients x 32 sentences per request (throughput, sentences/s)
  single: 32 clients x 1 sentence per request (throughput of cross-request batching)
  serial: 1 client x 1 sentence (latency per request: the proxy's overhead is Ray minus plain)
Every configuration runs the same compute threads in all (2 on the 2-core machine this was
written on): plain and 1 replica = 2 model workers x 1 thread; 2 replicas = 1 worker x 1 thread
each. Exact fp32 torch everywhere, so every configuration computes the same thing. ray-1-m5 is
ray-1 with Ray Serve's default max_ongoing_requests (5) instead of ours.

    .venv/bin/python benchmarks/ray_serve.py --rounds 2 --out bench-results/ray-serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
import sentences as sentences_mod  # noqa: E402

COMMON = ["--backend", "torch", "--dtype", "fp32", "--torch-compile", "off", "--threads", "1", "--log-level", "warning"]
CONFIGS = {
    "plain": ["--model-workers", "2"],
    "ray-1": ["--ray", "--replicas", "1", "--ray-replica-cpus", "2", "--model-workers", "2"],
    "ray-2": ["--ray", "--replicas", "2", "--ray-replica-cpus", "1", "--model-workers", "1"],
    # 1 replica with Ray Serve's default max_ongoing_requests (5) instead of ours (192 here)
    "ray-1-m5": ["--ray", "--replicas", "1", "--ray-replica-cpus", "2", "--model-workers", "2",
                 "--ray-max-ongoing-requests", "5"],
}
WORKLOADS = {"bulk": (4, 32), "single": (32, 1), "serial": (1, 1)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(name: str, log_dir: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "embedserve", "serve", "--host", "127.0.0.1", "--port", str(port), *COMMON,
           *CONFIGS[name]]
    log = (log_dir / f"{name}.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.monotonic()
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < 300:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: see {log.name}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return process, url, time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{name} not ready")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--bulk-total", type=int, default=2048)
    parser.add_argument("--single-total", type=int, default=1024)
    parser.add_argument("--serial-total", type=int, default=300)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    totals = {"bulk": args.bulk_total, "single": args.single_total, "serial": args.serial_total}
    texts = sentences_mod.load_workload("uniform", None)
    log_dir = Path(args.out).parent if args.out else Path("bench-results")
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, list[dict]]] = {}
    for round_ in range(args.rounds):
        for name in args.configs.split(","):
            process, url, ready_s = start(name, log_dir)
            try:
                for workload, (concurrency, batch) in WORKLOADS.items():
                    result = asyncio.run(loadgen.run_load(
                        url, concurrency, batch, totals[workload], sentences=texts, warmup=8
                    ))
                    result["ready_s"] = round(ready_s, 1)
                    runs.setdefault(name, {}).setdefault(workload, []).append(result)
                    print(f"round {round_ + 1} {name:6s} {workload:6s} {result['sentences_per_s']:8.1f} sent/s "
                          f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms errors {result['errors']}",
                          flush=True)
            finally:
                stop(process)
    summary = {
        name: {
            workload: {
                "sentences_per_s": statistics.median(r["sentences_per_s"] for r in results),
                "p50_ms": statistics.median(r["p50_ms"] for r in results),
                "p99_ms": statistics.median(r["p99_ms"] for r in results),
                "errors": sum(r["errors"] for r in results),
            }
            for workload, results in by_workload.items()
        }
        for name, by_workload in runs.items()
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()

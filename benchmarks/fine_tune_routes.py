"""Fine-tuning through the Embedding Service's routes, measured as its users would see it.

One embedserve server (`--models-dir`, `--state-dir`), the default model. For each of
`POST /fine-tune` (full) and `POST /fine-tune-lora`, sent exactly as the Embedding Service's README
shows (`text_content` = the train split's `query<TAB>passage` lines, `model_name`; no learning rate
or epochs: the routes' defaults):
- serving throughput while the job trains, in windows of closed-loop /v1/embeddings load
  (aiohttp clients, `--clients`, `--batch` sentences a request; `--window` seconds every `--gap`
  seconds: load all along would leave training little of 2 CPUs), against the same load on the
  idle server before any job;
- when `GET /train-status/{id}` says completed: MRR@10 and recall@1 on the dev split, computed from
  vectors the server returns for the new model *by name* (and for the base model, before), with
  the same metric code the jobs report (training/evaluate.py).

    python benchmarks/fine_tune_routes.py --out bench-results/fine-tune-routes.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import loadgen  # noqa: E402
from run import HOST, VENV_BIN, Server, _git_commit  # noqa: E402

from embedserve.training.data import read_file  # noqa: E402
from embedserve.training.evaluate import retrieval_metrics  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "data"
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def served_vectors(url: str, model: str, texts: list[str], batch: int = 64) -> np.ndarray:
    rows = []
    with httpx.Client(timeout=300, trust_env=False) as client:
        for start in range(0, len(texts), batch):
            r = client.post(f"{url}/v1/embeddings", json={"input": texts[start : start + batch], "model": model})
            r.raise_for_status()
            rows += [d["embedding"] for d in r.json()["data"]]
    return np.asarray(rows, dtype=np.float32)


def dev_metrics(url: str, model: str, pairs) -> dict[str, float]:
    """training/evaluate.evaluate_model's metric, on vectors served by name."""
    passages, index, relevant = [], {}, []
    for pair in pairs:
        if pair.positive not in index:
            index[pair.positive] = len(passages)
            passages.append(pair.positive)
        relevant.append(index[pair.positive])
    queries = served_vectors(url, model, [p.anchor for p in pairs])
    docs = served_vectors(url, model, passages)
    return retrieval_metrics(queries, docs, relevant)


def load_window(url: str, args, seconds: float) -> dict:
    """Closed-loop /v1/embeddings load for `seconds` (the run is cut off there; answers checked)."""
    window = asyncio.run(loadgen.run_load(url, args.clients, args.batch, 10**9, model=BASE, timeout=seconds, warmup=1))
    return {"throughput": window["sentences_per_s"], "p50_ms": window["p50_ms"], "errors": window["errors"]}


def train(url: str, route: str, body: dict, args, record: dict) -> dict:
    r = httpx.post(f"{url}{route}", json=body, timeout=120, trust_env=False)
    r.raise_for_status()
    job = r.json()
    print(f"{route}: {job}", flush=True)
    started, windows, status = time.monotonic(), [], {}
    next_window = started
    while True:
        status = httpx.get(f"{url}/train-status/{job['job_id']}", timeout=30, trust_env=False).json()
        if status["status"] in ("completed", "failed", "cancelled"):
            break
        if status["status"] == "running" and time.monotonic() >= next_window:
            window = load_window(url, args, args.window)
            windows.append({**window, "progress": status["progress"]})
            print(f"  during training ({status['progress']}%): {window['throughput']} sentences/s", flush=True)
            next_window = time.monotonic() + args.gap
        else:
            time.sleep(1)
    record.update(job=job, final_status=status, wall_seconds=round(time.monotonic() - started, 1), windows=windows)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8141)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="sentences per /v1/embeddings request")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of load per measurement window")
    parser.add_argument("--gap", type=float, default=60.0,
                        help="seconds without load between windows during training (load all along would starve it)")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--server-args", default="")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "fine-tune-routes.json")
    args = parser.parse_args()

    train_text = (DATA / "stdlib-pairs-train.tsv").read_text()
    dev = read_file(DATA / "stdlib-pairs-dev.tsv").pairs
    work = Path(tempfile.mkdtemp(prefix="embedserve-ft-bench-"))
    cmd = [str(VENV_BIN / "embedserve"), "serve", "--host", HOST, "--port", str(args.port),
           "--models-dir", str(work / "models"), "--state-dir", str(work / "state"),
           "--train-threads", str(args.train_threads), *args.server_args.split()]
    server = Server("embedserve-fine-tune", cmd, args.port, ["/ready"], work)
    url = f"http://{HOST}:{args.port}"
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "commit": _git_commit(), "cpus": os.cpu_count(),
              "clients": args.clients, "batch": args.batch, "window_s": args.window, "gap_s": args.gap,
              "train_threads": args.train_threads, "command": sys.argv, "jobs": {}}
    server.start(900)
    try:
        result["base_dev"] = dev_metrics(url, BASE, dev)
        print(f"base on dev: {result['base_dev']}", flush=True)
        result["idle"] = [load_window(url, args, args.window) for _ in range(3)]
        print(f"idle: {[w['throughput'] for w in result['idle']]} sentences/s", flush=True)
        routes = {"full": ("/fine-tune", {}), "lora": ("/fine-tune-lora", {})}
        for method in args.methods.split(","):
            route, extra = routes[method]
            name = f"minilm-stdlib-{method}"
            record: dict = {"route": route, "model_name": name}
            status = train(url, route, {"text_content": train_text, "model_name": name, **extra}, args, record)
            if status["status"] == "completed":
                record["dev"] = dev_metrics(url, name, dev)
                record["dev_gain_mrr@10"] = round(record["dev"]["mrr@10"] - result["base_dev"]["mrr@10"], 4)
                print(f"{name} on dev: {record['dev']} (MRR@10 {record['dev_gain_mrr@10']:+.4f})", flush=True)
            during = [w["throughput"] for w in record["windows"] if w["throughput"]]
            record["during_median"] = float(np.median(during)) if during else None
            result["jobs"][method] = record
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    idle_rate = float(np.median([w["throughput"] for w in result["idle"]]))
    print(f"\nidle {idle_rate:.0f} sentences/s")
    for method, record in result["jobs"].items():
        during = record["during_median"]
        print(f"{method}: {record['wall_seconds']} s, dev {record.get('dev')}, serving during training "
              f"{during} sentences/s ({during / idle_rate:.0%} of idle)" if during else f"{method}: {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

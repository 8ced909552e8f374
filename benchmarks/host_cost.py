"""CPU cost of embedserve's host path, per request and per sentence, with free inference.

The server is benchmarks/host_cost_server.py (the real app, uvicorn set up as `embedserve serve`
sets it up, the real all-MiniLM-L6-v2 tokenizer, inference stubbed: see its docstring), started
pinned to core 0 (`taskset -c 0`), so every thread it has shares that one core. The load
generator (benchmarks/loadgen.py's closed-loop aiohttp client) runs in its own process pinned
to core 1 (`taskset -c 1`), one process per workload run. The figure is the server's CPU time
(user + system, all threads of the server process and of every process under it, from
/proc/<pid>/stat via psutil) over the timed run, divided by the requests and sentences answered;
throughput is reported too, but it is the less robust number (it depends on whether the client
or the server's core is the bottleneck, and on whatever else runs on the machine).

`--api-processes N` (default 1: one process does everything) runs the server as
`embedserve serve --api-processes N` does (host_cost_server.py's docstring): a supervisor, N
front-end processes and one engine process (plus multiprocessing's resource tracker), all on
core 0 (affinity is inherited), and the CPU time is that of the whole tree: the extra processes
and the front-end -> engine IPC are part of what the option costs. Every process is there
before the first timed run (the driver waits until /ready has answered from the front-ends);
a run whose process tree changed meanwhile is flagged (`server_tree_changed`). Garbage
collections are not timed apart with N > 1 (--gc-stats covers one process): the columns built
on them show "-", and the headline figure is the measured CPU, collections included.

Workloads, each against OpenAI's POST /v1/embeddings (`{"input": [...], "model": ...}`) and
TEI's POST /embed (`{"inputs": [...]}`):
  single: 1 sentence per request, 32 clients (interactive traffic)
  bulk:   32 sentences per request, 4 clients (indexing)
Texts: benchmarks/sentences.py's `uniform` workload (5-40 words, mean ~22), as run.py --lengths
uniform. Each workload run has an untimed concurrent warm-up, then the timed run of a fixed
number of requests; every answer is checked (status, one vector per input, dimension), and a
wrong one is an error. --rounds N repeats every workload N times (one server for all of them)
and reports the median of each figure.

Full garbage collections are counted apart. The app imports torch (with --fake too: importing
embedserve.api.app alone leaves ~440k objects tracked) and the real backend adds transformers and
sentence-transformers, so the cyclic collector tracks ~450-640k objects and one generation-2 collection costs 0.25-0.5 s of the event loop,
every few thousand single-sentence requests. A run of 10,000 sees 0 to 5 of them, so the
headline CPU per request is the median over rounds of the CPU without them plus their time
pooled over all rounds; the server (--gc-stats) times every collection through `gc.callbacks`,
asked for with SIGUSR1 before and after each timed run.

Besides the server's CPU, each run records how busy each core was in all (/proc/stat) minus
the server's (core 0) or the client's (core 1) own CPU: "others" well above 0 means other work
shared the core; client use near 100% would mean the client, not the server, limited
throughput (the CPU per request stays valid either way, but it rises when the server is not
saturated: fewer requests share each loop turn and batch). A fixed pure-Python workload is
timed on core 0 before and after (`calibrate`): on a VM the same code's CPU per request drifted
by 15-20% between runs minutes apart with no steal time shown, so compare two versions in the
same session (alternating runs), and check the speed figure moved little.

    .venv/bin/python benchmarks/host_cost.py --rounds 3
    .venv/bin/python benchmarks/host_cost.py --rounds 3 --fake --out bench-results/host-cost-fake.json
    .venv/bin/python benchmarks/host_cost.py --rounds 3 --api-processes 2 --out bench-results/host-cost-p2.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(HERE))
HOST = "127.0.0.1"
SERVER_CORE, CLIENT_CORE = 0, 1
ROUTES = {"openai": "/v1/embeddings", "tei": "/embed"}
WORKLOADS = {"single": (32, 1), "bulk": (4, 32)}  # name -> (clients, sentences per request)
DEFAULT_REQUESTS = {"single": 10000, "bulk": 800}  # timed requests per run (sized for < 3 min at --rounds 3)
WARMUP_FRACTION = 0.1  # untimed requests before each timed run, as a share of it


# ---- the client process (one per workload run, pinned to CLIENT_CORE) -------------------------------

def _tei_checker(dim: int | None):
    """Checker for TEI's POST /embed answers (loadgen's), and the dimension it learnt."""
    from loadgen import tei_embed_checker

    return tei_embed_checker(dim)


def server_tree(pid: int) -> list[int]:
    """`pid` and every living process under it (recursive), from /proc/<pid>/task/<tid>/children."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except FileNotFoundError:
                pass
    return sorted(set(pids))


def _cpu_split_one(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every thread of `pid`, living or ended (/proc/<pid>/stat)."""
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user, t.system
    except ImportError:  # /proc/<pid>/stat fields 14 and 15, in clock ticks
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_split(pid: int, pids: list[int] | None = None) -> tuple[float, float]:
    """(user, system) CPU seconds of the server: `pid` and every process under it (or `pids`).
    With --api-processes 1 that is the one server process; a process gone meanwhile counts 0."""
    user = system = 0.0
    for one in server_tree(pid) if pids is None else pids:
        try:
            u, s = _cpu_split_one(one)
        except (OSError, ProcessLookupError) + _psutil_errors():
            continue
        user, system = user + u, system + s
    return user, system


def _psutil_errors() -> tuple[type[BaseException], ...]:
    try:
        import psutil

        return (psutil.NoSuchProcess, psutil.AccessDenied)
    except ImportError:
        return ()


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def core_times(core: int) -> dict[str, float]:
    """Seconds core `core` spent busy (user, nice, system, irq, softirq), in softirq, and stolen (/proc/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                # user nice system idle iowait irq softirq steal (guest is inside user)
                return {"busy": (v[0] + v[1] + v[2] + v[5] + v[6]) / tick, "softirq": (v[5] + v[6]) / tick,
                        "steal": v[7] / tick}
    return {"busy": float("nan"), "softirq": float("nan"), "steal": float("nan")}


def gc_snapshot(pid: int, path: str | None) -> dict | None:
    """The server's garbage-collection totals (host_cost_server.py --gc-stats), asked for with SIGUSR1."""
    if not path:
        return None
    target = Path(path)
    target.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            return json.loads(target.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.01)
    return None


def gc_delta(before: dict | None, after: dict | None, requests: int, cpu: float) -> dict:
    """What the cyclic garbage collector cost during a run. Full (generation 2) collections are
    reported apart: with torch and transformers imported the collector tracks ~630k objects and one
    full collection takes ~0.4 s, while a few thousand requests may see none or one of them."""
    if not before or not after or not requests:
        return {}
    gen = {g: {k: after["generations"][g][k] - before["generations"][g][k] for k in ("collections", "seconds")}
           for g in "012"}
    seconds = sum(v["seconds"] for v in gen.values())
    full = gen["2"]
    return {
        "gc_collections": {f"gen{g}": v["collections"] for g, v in gen.items()},
        "gc_s": round(seconds, 4),
        "gc_full_collections": full["collections"],
        "gc_full_s": round(full["seconds"], 4),
        "gc_ms_per_request": round(1000 * seconds / requests, 4),
        "gc_share_of_server_cpu": round(seconds / cpu, 4) if cpu else None,
        "server_cpu_ms_per_request_excl_full_gc": round(1000 * (cpu - full["seconds"]) / requests, 4),
        "gc_tracked_objects": after["tracked_objects"],
    }


def client_main(spec: dict) -> None:
    """Warm up, then one timed run; print what the server's CPU and the cores did meanwhile, as JSON."""
    import loadgen
    import orjson
    import sentences as sentences_mod

    sents = sentences_mod.load_workload("uniform")
    url, pid = spec["url"], spec["server_pid"]
    clients, batch = spec["clients"], spec["batch"]
    path = ROUTES[spec["route"]]

    def load(total_requests: int, warmup: int, dim: int | None) -> dict:
        if spec["route"] == "openai":
            make_body = check = None
            seen = None
        else:
            check, seen = _tei_checker(dim)

            def make_body(texts: list[str]) -> bytes:
                return orjson.dumps({"inputs": texts})

        result = asyncio.run(loadgen.run_load(
            url, clients, batch, total_requests * batch, sentences=sents, timeout=spec["timeout"],
            warmup=warmup, dim=dim, path=path, make_body=make_body, check=check,
        ))
        if seen is not None:
            result["dim"] = seen["dim"]
        return result

    warm = load(spec["warmup_requests"], 2, None)  # the 2 sequential requests also learn the dimension
    dim = warm["dim"]
    if warm["errors"] or warm["timed_out"]:
        raise SystemExit(f"warm-up failed: {warm['error_samples']} timed_out={warm['timed_out']}")

    gc0 = gc_snapshot(pid, spec.get("gc_stats"))  # before the CPU bracket: the dump itself costs the server
    tree0 = server_tree(pid)
    split0, core0, core1 = cpu_split(pid, tree0), core_times(SERVER_CORE), core_times(CLIENT_CORE)
    cpu0 = sum(split0)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    res = load(spec["requests"], 0, dim)
    wall = time.perf_counter() - wall0
    tree1 = server_tree(pid)
    split1 = cpu_split(pid, tree1)
    cpu = sum(split1) - cpu0
    system = split1[1] - split0[1]
    core0b, core1b = core_times(SERVER_CORE), core_times(CLIENT_CORE)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (self1.ru_utime - self0.ru_utime) + (self1.ru_stime - self0.ru_stime)
    gc1 = gc_snapshot(pid, spec.get("gc_stats"))

    requests, sentences = res["requests_ok"], res["sentences_ok"]
    print(json.dumps({
        "route": spec["route"], "path": path, "workload": spec["workload"], "clients": clients, "batch": batch,
        "requests": requests, "sentences": sentences, "errors": res["errors"], "error_samples": res["error_samples"],
        "timed_out": res["timed_out"], "dim": res["dim"],
        "wall_s": round(wall, 4), "loadgen_elapsed_s": res["elapsed_s"],
        "requests_per_s": res["requests_per_s"], "sentences_per_s": res["sentences_per_s"],
        "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
        "server_cpu_s": round(cpu, 4),
        "server_processes": len(tree1), "server_tree_changed": tree0 != tree1,
        "server_cpu_ms_per_request": round(1000 * cpu / requests, 4) if requests else None,
        "server_cpu_us_per_sentence": round(1e6 * cpu / sentences, 3) if sentences else None,
        "server_core_util": round(cpu / wall, 4),
        "server_system_share": round(system / cpu, 4) if cpu else None,  # kernel: sockets, futexes, epoll
        "core0_busy_util": round((core0b["busy"] - core0["busy"]) / wall, 4),
        "core0_irq_util": round((core0b["softirq"] - core0["softirq"]) / wall, 4),
        "core0_steal_util": round((core0b["steal"] - core0["steal"]) / wall, 4),
        "core1_busy_util": round((core1b["busy"] - core1["busy"]) / wall, 4),
        "client_core_util": round(client_cpu / wall, 4),
        # whatever else used the cores meanwhile (other processes; interrupts; the driver, which sleeps)
        "others_core0_util": round(max(0.0, core0b["busy"] - core0["busy"] - cpu) / wall, 4),
        "others_core1_util": round(max(0.0, core1b["busy"] - core1["busy"] - client_cpu) / wall, 4),
        **gc_delta(gc0, gc1, requests, cpu),
    }))


# ---- the driver ---------------------------------------------------------------------------------------

def calibrate(core: int, repeats: int = 7) -> float:
    """CPU milliseconds a fixed piece of pure-Python work (hashing, dicts, JSON of floats) takes on
    `core`, best of `repeats`: how fast the machine is right now. On a VM the same host path can cost
    10-20% more or less from one hour to the next with no steal time shown; comparing this figure
    between two runs tells drift of the machine from a change of the code."""
    import random

    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    rng = random.Random(0)
    floats = [rng.random() for _ in range(384)]
    best = float("inf")
    try:
        for _ in range(repeats):
            started = time.process_time()
            table: dict[str, int] = {}
            for i in range(20000):
                table[f"k{i}"] = hash((i, "x")) & 0xFFFF
            for _ in range(60):
                json.loads(json.dumps({"data": [{"embedding": floats, "index": 0}], "usage": table.get("k1")}))
            best = min(best, time.process_time() - started)
    finally:
        os.sched_setaffinity(0, previous)
    return round(1000 * best, 2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def python_bin() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Server:
    def __init__(self, cmd: list[str], port: int, log_path: Path, api_processes: int = 1):
        self.cmd, self.port, self.log_path, self.api_processes = cmd, port, log_path, api_processes
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        import httpx

        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        with self.log_path.open("wb") as log:  # this run's only: the access log writes a line per request
            log.write(f"\n=== {dt.datetime.now().isoformat()} {shlex.join(self.cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        # One process: its first 200 is enough. N front-ends: each turns ready on its own (within a
        # second of the engine, remote.py's REFRESH_SECONDS), and a connection reaches whichever
        # accepts it first: many 200s in a row on new connections, over more than that second.
        wanted, streak, first_ok = (1, 0.0) if self.api_processes == 1 else (40, 2.0), 0, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                ok = httpx.get(f"http://{HOST}:{self.port}/ready", timeout=2.0, trust_env=False).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                streak += 1
                first_ok = first_ok or time.monotonic()
                if streak >= wanted[0] and time.monotonic() - first_ok >= wanted[1]:
                    return
                time.sleep(0.05)
                continue
            streak, first_ok = 0, None
            time.sleep(0.25)
        raise RuntimeError(f"server not ready within {timeout:g} s; see {self.log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the command: this is the Python server itself

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM to the server alone: with --api-processes N it is the supervisor, which drains the
        # front-ends, then stops the engine. What is left after that is killed, the whole session.
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only the server and its children
        except (ProcessLookupError, PermissionError):
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def run_client(spec: dict, timeout: float) -> dict:
    cmd = ["taskset", "-c", str(CLIENT_CORE), python_bin(), str(Path(__file__).resolve()), "--client", json.dumps(spec)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client for {spec['workload']} {spec['route']} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


MEDIAN_KEYS = (
    "requests_per_s", "sentences_per_s", "server_cpu_ms_per_request", "server_cpu_us_per_sentence",
    "server_core_util", "server_system_share", "core0_busy_util", "core0_irq_util", "core0_steal_util", "client_core_util", "core1_busy_util",
    "others_core0_util", "others_core1_util", "gc_ms_per_request", "gc_share_of_server_cpu",
    "server_cpu_ms_per_request_excl_full_gc",
    "p50_ms", "p99_ms", "server_processes",
)


def summarize(rounds: list[list[dict]]) -> list[dict]:
    rows = []
    for workload in WORKLOADS:
        for route, path in ROUTES.items():
            runs = [r for rnd in rounds for r in rnd if r["workload"] == workload and r["route"] == route]
            if not runs:
                continue
            row = {"workload": workload, "route": route, "path": path, "rounds": len(runs),
                   "clients": runs[0]["clients"], "batch": runs[0]["batch"], "requests": runs[0]["requests"],
                   "errors": sum(r["errors"] for r in runs), "timed_out": any(r["timed_out"] for r in runs),
                   "server_tree_changed": any(r.get("server_tree_changed") for r in runs)}
            for key in MEDIAN_KEYS:
                values = [r[key] for r in runs if r.get(key) is not None]
                row[key] = round(statistics.median(values), 4) if values else None
            # Full collections are rare and big: pooled over every round rather than a median of runs
            # that each saw 0, 1 or 2 of them. The estimate is the median CPU without them plus their
            # pooled cost per request (per sentence: the same, over the sentences).
            if all("gc_full_s" in r for r in runs):
                reqs = sum(r["requests"] for r in runs)
                full_ms = 1000 * sum(r["gc_full_s"] for r in runs) / reqs
                row["gc_full_collections"] = sum(r["gc_full_collections"] for r in runs)
                row["gc_full_ms_each"] = round(1000 * sum(r["gc_full_s"] for r in runs) / row["gc_full_collections"], 1) \
                    if row["gc_full_collections"] else None
                row["gc_full_ms_per_request_pooled"] = round(full_ms, 4)
                row["server_cpu_ms_per_request_estimate"] = round(row["server_cpu_ms_per_request_excl_full_gc"] + full_ms, 4)
                row["server_cpu_us_per_sentence_estimate"] = round(1000 * row["server_cpu_ms_per_request_estimate"] / row["batch"], 2)
            cpu = [r["server_cpu_ms_per_request"] for r in runs if r["server_cpu_ms_per_request"] is not None]
            row["server_cpu_ms_per_request_range"] = [min(cpu), max(cpu)] if cpu else None
            rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        (
            (f"Host-path CPU of one embedserve process ({meta['backend']}; inference stubbed), "
             if meta.get("api_processes", 1) == 1 else
             f"Host-path CPU of embedserve --api-processes {meta['api_processes']} (supervisor, "
             f"{meta['api_processes']} front-ends, engine; CPU of the whole process tree; {meta['backend']}; "
             "inference stubbed), ")
            + f"server on core {SERVER_CORE}, client on core {CLIENT_CORE}"
        ),
        (
            f"CPU: {meta['cpu_model']} ({meta['cpu_count']} CPUs); commit {meta['git_commit']}"
            + (" (tree has uncommitted changes)" if meta["git_dirty"] else "")
            + f"; {meta['rounds']} round(s), medians; texts: uniform 5-40 words"
        ),
        (
            f"machine speed check (fixed pure-Python work on core {SERVER_CORE}, best of 7, lower is faster): "
            f"{meta.get('calibration_ms_start')} ms before, {meta.get('calibration_ms_end')} ms after"
        ),
        "",
        (
            "| workload | route | req/s | sentences/s | server CPU-ms/req | CPU-µs/sentence | measured CPU-ms/req "
            "(median, range) | without full GC | full GCs: count, ms each | server core util | client core util "
            "| others on core 0 / 1 | p50 ms | errors |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lo, hi = r["server_cpu_ms_per_request_range"] or (None, None)
        spread = f" ({lo:.3f}-{hi:.3f})" if r["rounds"] > 1 and lo is not None else ""
        estimate = r.get("server_cpu_ms_per_request_estimate", r["server_cpu_ms_per_request"])
        per_sentence = r.get("server_cpu_us_per_sentence_estimate", r["server_cpu_us_per_sentence"])
        full = (f"{r['gc_full_collections']}, {r['gc_full_ms_each']:.0f}" if r.get("gc_full_ms_each") is not None
                else str(r.get("gc_full_collections", "-")))
        lines.append(
            f"| {r['workload']} ({r['clients']}x{r['batch']}) | {r['path']} | {r['requests_per_s']:.0f} "
            f"| {r['sentences_per_s']:.0f} | **{estimate:.3f}** | **{per_sentence:.0f}** "
            f"| {r['server_cpu_ms_per_request']:.3f}{spread} "
            f"| {_num(r.get('server_cpu_ms_per_request_excl_full_gc'))} | {full} "
            f"| {100 * r['server_core_util']:.0f}% | {100 * r['client_core_util']:.0f}% "
            f"| {100 * r['others_core0_util']:.0f}% / {100 * r['others_core1_util']:.0f}% | {r['p50_ms']:.2f} "
            f"| {r['errors']}{' TIMED OUT' if r['timed_out'] else ''}"
            f"{' PROCESS TREE CHANGED' if r.get('server_tree_changed') else ''} |"
        )
    lines += [
        "",
        (
            "server CPU-ms/req = median over rounds of the CPU without full (generation 2) garbage collections, "
            "plus the full collections' time pooled over all rounds per request; CPU-µs/sentence likewise. "
            "'others on core N': CPU time of anything else on that core (other processes, interrupts)."
        ),
    ]
    if meta.get("api_processes", 1) > 1:
        lines.append(f"With --api-processes {meta['api_processes']} no garbage collection is timed apart: "
                     "server CPU-ms/req is the measured CPU of the whole process tree, collections included.")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return None


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(description="CPU cost of one embedserve process's host path (inference stubbed).")
    p.add_argument("--fake", action="store_true", help="FakeBackend's whitespace tokenizer instead of the real one")
    p.add_argument("--rounds", type=int, default=1, help="repeat every workload this many times; medians are reported")
    p.add_argument("--requests", type=int, default=None,
                   help=f"timed requests per single-sentence run (default {DEFAULT_REQUESTS['single']}); "
                        f"bulk runs get {DEFAULT_REQUESTS['bulk']}/{DEFAULT_REQUESTS['single']} of it")
    p.add_argument("--api-processes", type=int, default=1,
                   help="N > 1: serve with N front-end processes and one engine process (the CPU is the whole tree's)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound per workload run, seconds")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--out", default=str(REPO_ROOT / "bench-results" / "host-cost.json"))
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)  # internal: run one client, JSON spec
    args = p.parse_args()
    if args.client is not None:
        client_main(json.loads(args.client))
        return 0
    if (os.cpu_count() or 1) < 2:
        p.error("needs 2 CPUs: the server on one, the load generator on the other")
    if args.api_processes < 1:
        p.error("--api-processes must be at least 1")
    if args.api_processes > 1 and args.fake:
        p.error("--fake needs --api-processes 1: the front-ends tokenize with the model's real tokenizer")

    try:  # the driver mostly sleeps; keep even that off the server's core
        os.sched_setaffinity(0, {CLIENT_CORE})
    except OSError:
        pass
    single = args.requests or DEFAULT_REQUESTS["single"]
    requests = {"single": single, "bulk": max(1, round(single * DEFAULT_REQUESTS["bulk"] / DEFAULT_REQUESTS["single"]))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "logs").mkdir(exist_ok=True)
    port = args.port or free_port()
    cmd = ["taskset", "-c", str(SERVER_CORE), python_bin(), str(HERE / "host_cost_server.py"), "--port", str(port)]
    if args.fake:
        cmd.append("--fake")
    gc_stats = out.parent / "logs" / f"host-cost-gc-{os.getpid()}.json"
    if args.api_processes == 1:
        cmd += ["--gc-stats", str(gc_stats)]
    else:
        cmd += ["--api-processes", str(args.api_processes)]
    backend = "FakeBackend whitespace tokenizer" if args.fake else "all-MiniLM-L6-v2 tokenizer (TorchBackend)"
    log_name = f"host-cost-server{'-fake' if args.fake else ''}{f'-p{args.api_processes}' if args.api_processes > 1 else ''}"
    server = Server(cmd, port, out.parent / "logs" / f"{log_name}.log", args.api_processes)
    meta = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        # the host path's own code: what a before/after comparison must know differed
        "git_changed_src": (git("status", "--porcelain", "--", "src") or "").splitlines(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "backend": backend, "fake": args.fake, "api_processes": args.api_processes, "rounds": args.rounds,
        "server_cmd": cmd,
        "workloads": {k: {"clients": c, "batch": b, "requests": requests[k]} for k, (c, b) in WORKLOADS.items()},
        "routes": ROUTES, "texts": "sentences.load_workload('uniform')",
    }
    print(f"{backend}; --api-processes {args.api_processes}; server on core {SERVER_CORE}, clients on core "
          f"{CLIENT_CORE}; {args.rounds} round(s); "
          f"requests per run {requests}", flush=True)
    started = time.monotonic()
    rounds: list[list[dict]] = []
    meta["calibration_ms_start"] = calibrate(SERVER_CORE)
    try:
        server.start(args.startup_timeout)
        tree = server_tree(server.pid)
        for pid in tree:
            affinity = sorted(os.sched_getaffinity(pid))
            if affinity != [SERVER_CORE]:
                raise RuntimeError(f"server process {pid} runs on cores {affinity}, not [{SERVER_CORE}]")
        if args.api_processes > 1 and len(tree) < args.api_processes + 2:  # + supervisor, engine (+ tracker)
            raise RuntimeError(f"server tree {tree}: expected a supervisor, {args.api_processes} front-ends, an engine")
        meta["server_processes"] = len(tree)
        stubbed = server.log_path.read_text(errors="replace").count("with inference stubbed")
        if stubbed < 1:  # logged by the stubbed factory, in the engine process with N > 1
            raise RuntimeError(f"the server did not log its inference stub; see {server.log_path}")
        idle0 = cpu_seconds(server.pid)
        time.sleep(2.0)
        meta["server_idle_core_util"] = round((cpu_seconds(server.pid) - idle0) / 2.0, 4)
        meta["server_startup_s"] = round(time.monotonic() - started, 2)
        for i in range(args.rounds):
            this_round = []
            for workload, (clients, batch) in WORKLOADS.items():
                for route in ROUTES:
                    spec = {"url": f"http://{HOST}:{port}", "server_pid": server.pid, "route": route,
                            "workload": workload, "clients": clients, "batch": batch, "requests": requests[workload],
                            "warmup_requests": max(2 * clients, int(WARMUP_FRACTION * requests[workload])),
                            "timeout": args.timeout,
                            "gc_stats": str(gc_stats) if args.api_processes == 1 else None}
                    r = run_client(spec, args.timeout * 2 + 60)
                    this_round.append(r)
                    print(f"  round {i + 1} {workload:<6} {r['path']:<15} {r['requests_per_s']:>8.1f} req/s "
                          f"{r['sentences_per_s']:>8.1f} sent/s  server {r['server_cpu_ms_per_request']:.3f} CPU-ms/req "
                          f"{r['server_cpu_us_per_sentence']:.0f} CPU-us/sent ({100 * r['server_system_share']:.0f}% kernel)  "
                          f"server core {100 * r['server_core_util']:.0f}% "
                          f"core0 busy {100 * r['core0_busy_util']:.0f}%  client {100 * r['client_core_util']:.0f}% "
                          f"core1 busy {100 * r['core1_busy_util']:.0f}%  full GCs {r.get('gc_full_collections', '-')} "
                          f"({r.get('gc_full_s', 0):.2f} s)  processes {r['server_processes']}"
                          f"{' (CHANGED)' if r['server_tree_changed'] else ''}  errors {r['errors']}", flush=True)
            rounds.append(this_round)
    except KeyboardInterrupt:
        print("interrupted; server stopped", file=sys.stderr)
        return 130
    finally:
        server.stop()
        gc_stats.unlink(missing_ok=True)
    meta["calibration_ms_end"] = calibrate(SERVER_CORE)
    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = round(time.monotonic() - started, 1)
    rows = summarize(rounds)
    table = markdown(rows, meta)
    print("\n" + table)
    out.write_text(json.dumps({**meta, "summary": rows, "rounds": rounds, "markdown": table}, indent=2))
    print(f"\nresults written to {out} ({meta['total_s']} s)")
    return 1 if any(r["errors"] or r["timed_out"] or r["server_tree_changed"] for r in rows) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())

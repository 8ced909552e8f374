"""Side-by-side benchmark: the naive baseline vs embedserve, same inputs, same machine.

Why one server at a time: on a small CPU box two idle-but-resident servers already
compete for memory bandwidth, and a busy one steals cores from the other; so each server
is started, measured on every workload, and stopped before the next one starts.
Why rounds: shared machines drift (other tenants, thermal state). --rounds N alternates
(naive, embedserve) N times and reports the per-workload median, and the ratio
embedserve/naive, which is the number to quote; absolute numbers are machine-specific.

Workloads: "bulk" (4 clients x 32 sentences per request: offline indexing) and "single"
(32 clients x 1 sentence: interactive search traffic, where cross-request batching matters).

    python benchmarks/run.py                      # both servers, default totals
    python benchmarks/run.py --servers naive --bulk-total 256 --single-total 128
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
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

REPO_ROOT = Path(__file__).resolve().parent.parent
# The project venv if there is one, else whatever venv runs this script.
VENV_BIN = REPO_ROOT / ".venv" / "bin" if (REPO_ROOT / ".venv" / "bin").is_dir() else Path(sys.executable).parent
HOST = "127.0.0.1"
WORKLOADS = {"bulk": (4, 32), "single": (32, 1)}  # name -> (clients, sentences per request)


class Server:
    """A server subprocess in its own process group, logged to a file, always reaped."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_paths: list[str], log_dir: Path):
        self.name, self.cmd, self.port, self.ready_paths = name, cmd, port, ready_paths
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, startup_timeout: float) -> None:
        if port_in_use(self.port):  # never benchmark a stale server left on the port
            raise RuntimeError(f"port {self.port} already in use; stop whatever listens there")
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
        log = self.log_path.open("ab")
        log.write(f"\n=== {dt.datetime.now().isoformat()} {shlex.join(self.cmd)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + startup_timeout
        for path in self.ready_paths:
            self._wait_for(path, deadline)

    def _wait_for(self, path: str, deadline: float) -> None:
        url = f"http://{HOST}:{self.port}{path}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                code = httpx.get(url, timeout=2.0, trust_env=False).status_code
                if code == 200 or (code == 404 and path != "/health"):  # no /ready: /health suffices
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: {url} not 200 in time; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)  # the group is ours alone: start_new_session
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None


def _die_with_parent() -> None:
    """Linux: have the child get SIGTERM if this runner dies without cleaning up (SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def build_servers(args: argparse.Namespace, log_dir: Path) -> dict[str, Server]:
    python = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
    naive_cmd = [str(python), str(REPO_ROOT / "benchmarks" / "naive_server.py"),
                 "--host", HOST, "--port", str(args.naive_port), *shlex.split(args.naive_args)]
    servers = {"naive": Server("naive", naive_cmd, args.naive_port, ["/health"], log_dir)}
    for mode, mode_args in parse_modes(args.modes).items():
        name = "embedserve" if mode == "default" else f"embedserve-{mode}"
        es_cmd = shlex.split(args.embedserve_cmd or shlex.join([str(VENV_BIN / "embedserve"), "serve"]))
        es_cmd += ["--host", HOST, "--port", str(args.embedserve_port)]
        es_cmd += shlex.split(args.embedserve_args) + shlex.split(mode_args)
        servers[name] = Server(name, es_cmd, args.embedserve_port, ["/health", "/ready"], log_dir)
    return servers


def parse_modes(spec: str) -> dict[str, str]:
    """'default=;int8=--dtype int8' -> {"default": "", "int8": "--dtype int8"}: one embedserve per mode."""
    modes = {}
    for part in spec.split(";"):
        if part.strip():
            name, _, extra = part.partition("=")
            modes[name.strip()] = extra.strip()
    return modes


def measure(server: Server, args: argparse.Namespace, sents: list[str]) -> dict[str, dict]:
    """Start the server, run every workload against it, stop it (also on error)."""
    totals = {"bulk": args.bulk_total, "single": args.single_total}
    results: dict[str, dict] = {}
    try:
        server.start(args.startup_timeout)
        for name, (clients, batch) in WORKLOADS.items():
            res = asyncio.run(loadgen.run_load(
                f"http://{HOST}:{server.port}", clients, batch, totals[name], args.model,
                sentences=sents, timeout=args.timeout, warmup=args.warmup,
            ))
            results[name] = res
            print(f"  {server.name:<10} {name:<7} {res['sentences_per_s']:>9.1f} sent/s  "
                  f"p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  errors {res['errors']}"
                  + ("  TIMED OUT" if res["timed_out"] else ""), flush=True)
    finally:
        server.stop()
    return results


def summarize(rounds: list[dict[str, dict[str, dict]]], servers: list[str]) -> dict:
    """Median over rounds per (server, workload); ratio of the medians per workload."""
    summary: dict = {"servers": {}, "ratio_embedserve_over_naive": {}}
    for srv in servers:
        summary["servers"][srv] = {}
        for wl in WORKLOADS:
            runs = [r[srv][wl] for r in rounds if wl in r.get(srv, {})]
            if not runs:
                continue
            med = lambda key: statistics.median(x[key] for x in runs if x[key] is not None)  # noqa: E731
            summary["servers"][srv][wl] = {
                "sentences_per_s": round(med("sentences_per_s"), 2),
                "requests_per_s": round(med("requests_per_s"), 2),
                "p50_ms": round(med("p50_ms"), 2) if any(x["p50_ms"] for x in runs) else None,
                "p99_ms": round(med("p99_ms"), 2) if any(x["p99_ms"] for x in runs) else None,
                "errors": sum(x["errors"] for x in runs),
                "timed_out": any(x["timed_out"] for x in runs),
                "rounds": len(runs),
            }
    s = summary["servers"]
    for srv in servers:
        if srv == "naive":
            continue
        for wl in WORKLOADS:
            naive, es = s.get("naive", {}).get(wl), s.get(srv, {}).get(wl)
            if naive and es and naive["sentences_per_s"] > 0:
                key = wl if srv == "embedserve" else f"{srv}/{wl}"
                summary["ratio_embedserve_over_naive"][key] = round(es["sentences_per_s"] / naive["sentences_per_s"], 2)
    return summary


def print_table(summary: dict) -> None:
    fmt = "{:<16} {:<8} {:>12} {:>10} {:>10} {:>7}"
    print("\n" + fmt.format("server", "workload", "sentences/s", "p50 ms", "p99 ms", "errors"))
    print("-" * 68)
    for srv, wls in summary["servers"].items():
        for wl, r in wls.items():
            flag = " (timed out)" if r["timed_out"] else ""
            print(fmt.format(srv, wl, f"{r['sentences_per_s']:.1f}", _fmt(r["p50_ms"]),
                             _fmt(r["p99_ms"]), r["errors"]) + flag)
    for wl, ratio in summary["ratio_embedserve_over_naive"].items():
        print(f"ratio over naive, {wl}: {ratio:.2f}x sentences/s")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description="Benchmark embedserve against a naive baseline, one at a time.")
    p.add_argument("--servers", default="naive,embedserve", help="comma-separated: naive, embedserve")
    p.add_argument("--modes", default="default=",
                   help='embedserve modes, "name=extra args" separated by ";", e.g. "default=;int8=--dtype int8"')
    p.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times")
    p.add_argument("--bulk-total", type=int, default=2048, help="sentences in the bulk workload")
    p.add_argument("--single-total", type=int, default=1024, help="sentences in the single workload")
    p.add_argument("--model", default=loadgen.DEFAULT_MODEL, help="model name sent in requests")
    p.add_argument("--naive-port", type=int, default=8100)
    p.add_argument("--embedserve-port", type=int, default=8101)
    p.add_argument("--embedserve-cmd", default=None,
                   help="command to start embedserve (default: <venv>/bin/embedserve serve); "
                        "--host/--port and --embedserve-args are appended")
    p.add_argument("--naive-args", default="", help='extra args for the naive server, e.g. "--device cuda"')
    p.add_argument("--embedserve-args", default="", help='extra args, e.g. "--max-batch-size 64"')
    p.add_argument("--timeout", type=float, default=300.0, help="bound per workload run, seconds")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each workload")
    p.add_argument("--sentences", default=None, help="path to the STS TSV file")
    p.add_argument("--lengths", choices=sentences_mod.WORKLOADS, default="sts",
                   help="sts: the STS sentences of 5-40 words as they are (mean ~10); "
                        "uniform: texts of 5-40 words drawn evenly (mean ~22)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench-results" / "latest.json"))
    args = p.parse_args()

    wanted = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not wanted or any(n not in ("naive", "embedserve") for n in wanted):
        p.error("--servers takes a comma-separated subset of: naive, embedserve")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "logs").mkdir(exist_ok=True)
    servers = build_servers(args, out.parent / "logs")
    names = [n for n in servers if n.split("-")[0] in wanted]
    sents = sentences_mod.load_workload(args.lengths, args.sentences)
    print(f"{len(sents)} {args.lengths} texts; servers {names}; {args.rounds} round(s); {os.cpu_count()} CPUs", flush=True)

    signal.signal(signal.SIGTERM, _on_sigterm)
    rounds: list[dict] = []
    failures: list[str] = []
    try:
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            this_round: dict[str, dict] = {}
            for n in names:
                try:
                    this_round[n] = measure(servers[n], args, sents)
                except RuntimeError as exc:  # failed start or warm-up: report, go on
                    print(f"  {n}: FAILED: {exc}", file=sys.stderr, flush=True)
                    failures.append(f"round {i + 1} {n}: {exc}")
            rounds.append(this_round)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        for server in servers.values():
            server.stop()

    summary = summarize(rounds, names)
    print_table(summary)
    record = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(),
        "args": vars(args),
        "commands": {n: servers[n].cmd for n in names},
        "workloads": {k: {"clients": c, "batch": b} for k, (c, b) in WORKLOADS.items()},
        "summary": summary,
        "failures": failures,
        "rounds": rounds,
    }
    out.write_text(json.dumps(record, indent=2))
    print(f"\nresults written to {out}")
    bad = any(r["errors"] or r["timed_out"] for w in summary["servers"].values() for r in w.values())
    return 1 if bad or failures else 0


def _on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (e.g. a CI timeout) takes the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())

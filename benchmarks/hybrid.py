"""Hybrid-output benchmark: what sparse and multi-vector outputs cost, SPLADE vs a naive server, one long input.

Four measurements, each chosen by a flag, run one after the other in one invocation; each
runs --rounds times and reports medians. One server runs at a time (see run.py for why).

--outputs  Dense only vs dense + sparse + multi-vector, ON ONE SERVER PROCESS, through the same
           route (`POST /v1/encodings`, `outputs: ["dense"]` vs `["dense","sparse","multivector"]`),
           the two request kinds alternating round by round (their order flips each round). The
           model is all-MiniLM-L6-v2 made into a BGE-M3-style model (`build_minilm_m3`: CLS
           pooling + random seeded `sparse_linear.pt` / `colbert_linear.pt` heads), or any
           --model-folder. Workloads bulk (4 clients x 32 texts) and single (32 clients x 1).
           Reports the ratio all/dense of throughput and the time cost ratio dense/all.
--engine   The same comparison in-process, no HTTP: `backend.encode` with {embed} vs all three
           tasks, per mode (auto / torch fp32 / onnx fp32), so the forward pass + heads are
           seen apart from JSON and transfer (engine_outputs.py).
--splade   SPLADE-tiny (the `cognition` package's folder) served by embedserve
           (`POST /embed_sparse`) vs naive_sparse_server.py (`SparseEncoder.encode` per request),
           one server at a time, alternating; ratio embedserve/naive.
--long     One input of exactly 8192 tokens through a random-weight XLM-R of BGE-M3's real shape
           (`build_m3_shaped`, 24 x 1024, 8194 positions, BGE-M3 heads), dense only and all three
           outputs: seconds per request and the server's peak RSS (VmHWM, reset per request)
           (long_input.py).

Every answer is checked (status 200, one entry per input, the asked outputs present); a wrong
answer counts as an error and its texts do not count toward throughput. The model folders are
built by retrieval_models.py, the load by loadgen.run_load.

    python benchmarks/hybrid.py --outputs --engine --splade --rounds 3
    python benchmarks/hybrid.py --long --rounds 3
    python benchmarks/hybrid.py --long --layers 2 --hidden 64 --rounds 1     # a quick smoke
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import sys
from pathlib import Path

import httpx
import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(1, str(REPO_ROOT))  # tests.support.tiny_models, for --long's tokenizer
import loadgen
import sentences as sentences_mod
from engine_outputs import bench_engine, markdown_engine
from hybrid_common import KINDS, PYTHON, embedserve_server, fmt_number, ratio, served_mode
from long_input import bench_long, markdown_long
from retrieval_models import DEFAULT_WORK_DIR, check_bge_m3, minilm_m3_unless_given, splade_folder
from run import HOST, Server, _git_commit, _on_sigterm

WORKLOADS = {"bulk": (4, 32), "single": (32, 1)}  # name -> (clients, texts per request)
HTTP_CLIENT = "aiohttp" if loadgen.aiohttp else "httpx"
MEASUREMENTS = ("outputs", "engine", "splade", "long")  # the flags, in the order they run


def _run_workload(args: argparse.Namespace, wl: str, url: str, path: str, make_body: loadgen.BodyBuilder,
                  check: loadgen.AnswerChecker, sents: list[str]) -> dict:
    """One closed-loop run of workload `wl` against url + path, every answer checked."""
    clients, batch = WORKLOADS[wl]
    total = {"bulk": args.bulk_total, "single": args.single_total}[wl]
    return asyncio.run(loadgen.run_load(url, clients, batch, total, sentences=sents, timeout=args.timeout,
                                        warmup=args.warmup, client=HTTP_CLIENT, path=path,
                                        make_body=make_body, check=check))


def _print_run(label: str, wl: str, res: dict) -> None:
    print(f"  {label:<18} {wl:<7} {res['sentences_per_s']:>9.1f} sent/s  p50 {res['p50_ms']} ms  "
          f"p99 {res['p99_ms']} ms  errors {res['errors']}" + ("  TIMED OUT" if res["timed_out"] else "")
          + (f"  e.g. {res['error_samples'][0]}" if res["error_samples"] else ""), flush=True)


def _median_runs(runs: list[dict]) -> dict:
    def med(key: str) -> float | None:
        values = [x[key] for x in runs if x.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "sentences_per_s": med("sentences_per_s"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
        "errors": sum(x["errors"] for x in runs), "timed_out": any(x["timed_out"] for x in runs),
        "rounds": len(runs),
    }


# ---- 1. dense vs all three outputs on one server -----------------------------------------------


def bench_outputs(args: argparse.Namespace, sents: list[str], log_dir: Path, record: dict) -> dict:
    folder, how = minilm_m3_unless_given(args.model_folder, args.work_dir)
    kind_desc = check_bge_m3(folder)
    print(f"\n== outputs: dense vs dense+sparse+multivector, one server; model {folder} ({how}): {kind_desc}", flush=True)
    server = embedserve_server("embedserve-outputs", folder, args.port, args.server_args, log_dir)
    record["commands"]["outputs"] = server.cmd
    base = f"http://{HOST}:{args.port}"
    runs: dict[str, dict[str, list[dict]]] = {k: {wl: [] for wl in WORKLOADS} for k in KINDS}
    mode = None
    try:
        server.start(args.startup_timeout)
        mode = served_mode(args.port)
        print(f" served as: {mode}", flush=True)
        for i in range(args.rounds):
            order = list(KINDS) if i % 2 == 0 else list(reversed(KINDS))
            print(f" round {i + 1}/{args.rounds} (order {', '.join(order)})", flush=True)
            for wl in WORKLOADS:
                for kind_name in order:
                    outputs = KINDS[kind_name]
                    fmt = args.encoding_format

                    def body(texts: list[str], outputs: list[str] = outputs, fmt: str = fmt) -> bytes:
                        return orjson.dumps({"input": texts, "outputs": outputs, "encoding_format": fmt})

                    check = loadgen.check_encodings(outputs) if fmt == "float" else loadgen.check_encodings_count
                    res = _run_workload(args, wl, base, "/v1/encodings", body, check, sents)
                    runs[kind_name][wl].append(res)
                    _print_run(kind_name, wl, res)
    finally:
        server.stop()
    summary: dict = {"model_folder": str(folder), "model": kind_desc, "server_args": args.server_args,
                     "served_as": mode, "encoding_format": args.encoding_format, "medians": {}, "ratios": {}}
    for kind_name in KINDS:
        summary["medians"][kind_name] = {wl: _median_runs(r) for wl, r in runs[kind_name].items() if r}
    for wl in WORKLOADS:
        d, a = summary["medians"]["dense"].get(wl), summary["medians"]["all"].get(wl)
        if d and a:
            summary["ratios"][wl] = {
                "throughput_all_over_dense": ratio(a["sentences_per_s"], d["sentences_per_s"]),
                "time_cost_all_vs_dense": ratio(d["sentences_per_s"], a["sentences_per_s"]),
                "p50_all_over_dense": ratio(a["p50_ms"], d["p50_ms"]),
                "p99_all_over_dense": ratio(a["p99_ms"], d["p99_ms"]),
            }
    summary["rounds"] = runs
    return summary


# ---- 2. SPLADE: embedserve vs naive --------------------------------------------------------------


def bench_splade(args: argparse.Namespace, sents: list[str], log_dir: Path, record: dict) -> dict:
    folder = Path(args.splade_folder).resolve() if args.splade_folder else splade_folder()
    print(f"\n== splade: embedserve /embed_sparse vs naive SparseEncoder.encode; model {folder}", flush=True)
    naive_cmd = [str(PYTHON), str(BENCH_DIR / "naive_sparse_server.py"), "--host", HOST,
                 "--port", str(args.naive_port), "--model-path", str(folder), *shlex.split(args.naive_args)]
    servers = {
        "naive": Server("naive-sparse", naive_cmd, args.naive_port, ["/health"], log_dir),
        "embedserve": embedserve_server("embedserve-splade", folder, args.port, args.splade_server_args, log_dir),
    }
    record["commands"]["splade"] = {k: s.cmd for k, s in servers.items()}
    runs: dict[str, dict[str, list[dict]]] = {name: {wl: [] for wl in WORKLOADS} for name in servers}
    failures: list[str] = []
    answers: dict[str, list | None] = {}
    mode = None

    def body(texts: list[str]) -> bytes:
        return orjson.dumps({"inputs": texts})

    for i in range(args.rounds):
        order = list(servers) if i % 2 == 0 else list(reversed(servers))
        print(f" round {i + 1}/{args.rounds} (order {', '.join(order)})", flush=True)
        for name in order:
            server = servers[name]
            try:
                server.start(args.startup_timeout)
                if name == "embedserve" and mode is None:
                    mode = served_mode(server.port)
                    print(f"  embedserve served as: {mode}", flush=True)
                if name not in answers:  # the same few texts through each server once, compared below
                    resp = httpx.post(f"http://{HOST}:{server.port}/embed_sparse", json={"inputs": sents[:AGREE_TEXTS]},
                                      timeout=args.timeout, trust_env=False)
                    answers[name] = resp.json() if resp.status_code == 200 else None
                for wl in WORKLOADS:
                    res = _run_workload(args, wl, f"http://{HOST}:{server.port}", "/embed_sparse", body,
                                        loadgen.check_tei_sparse, sents)
                    runs[name][wl].append(res)
                    _print_run(name, wl, res)
            except RuntimeError as exc:
                print(f"  {name}: FAILED: {exc}", file=sys.stderr, flush=True)
                failures.append(f"round {i + 1} {name}: {exc}")
            finally:
                server.stop()
    summary: dict = {"model_folder": str(folder), "server_args": args.splade_server_args, "served_as": mode,
                     "medians": {},
                     "ratios_embedserve_over_naive": {}, "failures": failures,
                     "agreement": _agreement(answers.get("naive"), answers.get("embedserve"))}
    for name in servers:
        summary["medians"][name] = {wl: _median_runs(r) for wl, r in runs[name].items() if r}
    for wl in WORKLOADS:
        n, e = summary["medians"]["naive"].get(wl), summary["medians"]["embedserve"].get(wl)
        if n and e:
            summary["ratios_embedserve_over_naive"][wl] = {
                "throughput": ratio(e["sentences_per_s"], n["sentences_per_s"]),
                "p50": ratio(e["p50_ms"], n["p50_ms"]),
                "p99": ratio(e["p99_ms"], n["p99_ms"]),
            }
    summary["rounds"] = runs
    return summary


AGREE_TEXTS = 8


def _agreement(naive: list | None, ours: list | None) -> dict | None:
    """How closely embedserve's sparse vectors match the naive SparseEncoder's on the same texts."""
    if not naive or not ours or len(naive) != len(ours):
        return None
    jaccard, max_diff = [], 0.0
    for a, b in zip(naive, ours, strict=True):
        wa = {t["index"]: t["value"] for t in a}
        wb = {t["index"]: t["value"] for t in b}
        union = set(wa) | set(wb)
        jaccard.append(len(set(wa) & set(wb)) / len(union) if union else 1.0)
        max_diff = max([max_diff, *(abs(wa.get(i, 0.0) - wb.get(i, 0.0)) for i in union)])
    return {"texts": len(naive), "min_term_jaccard": round(min(jaccard), 4), "max_abs_weight_diff": round(max_diff, 6)}


# ---- report -------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines: list[str] = []
    if "outputs" in results:
        o = results["outputs"]
        lines += [(f"### Outputs: dense only vs dense+sparse+multivector (one server; {Path(o['model_folder']).name}, "
                  f"server args `{o['server_args'] or '(auto)'}`, served as {o['served_as']})"), "",
                  "| workload | outputs | sentences/s | p50 ms | p99 ms | errors |",
                  "|---|---|---:|---:|---:|---:|"]
        for wl in WORKLOADS:
            for kind_name, outputs in KINDS.items():
                m = o["medians"].get(kind_name, {}).get(wl)
                if m:
                    lines.append(f"| {wl} | {'+'.join(outputs)} | {fmt_number(m['sentences_per_s'])} | "
                                 f"{fmt_number(m['p50_ms'])} | {fmt_number(m['p99_ms'])} | {m['errors']}"
                                 f"{' (timed out)' if m['timed_out'] else ''} |")
        lines += ["", ("| workload | throughput all/dense | time cost all vs dense (dense/all throughput) | "
                  "p50 all/dense | p99 all/dense |"), "|---|---:|---:|---:|---:|"]
        for wl, r in o["ratios"].items():
            lines.append(f"| {wl} | {fmt_number(r['throughput_all_over_dense'], 3)} | {fmt_number(r['time_cost_all_vs_dense'], 3)}x | "
                         f"{fmt_number(r['p50_all_over_dense'], 3)} | {fmt_number(r['p99_all_over_dense'], 3)} |")
        lines.append("")
    if "engine" in results:
        lines += markdown_engine(results["engine"])
    if "splade" in results:
        s = results["splade"]
        lines += [(f"### SPLADE-tiny /embed_sparse: embedserve vs naive SparseEncoder.encode per request "
                  f"(server args `{s['server_args'] or '(auto)'}`, served as {s['served_as']})"), "",
                  "| workload | server | sentences/s | p50 ms | p99 ms | errors |", "|---|---|---:|---:|---:|---:|"]
        for wl in WORKLOADS:
            for name in ("naive", "embedserve"):
                m = s["medians"].get(name, {}).get(wl)
                if m:
                    lines.append(f"| {wl} | {name} | {fmt_number(m['sentences_per_s'])} | {fmt_number(m['p50_ms'])} | "
                                 f"{fmt_number(m['p99_ms'])} | {m['errors']}{' (timed out)' if m['timed_out'] else ''} |")
        lines += ["", "| workload | throughput embedserve/naive | p50 embedserve/naive | p99 embedserve/naive |",
                  "|---|---:|---:|---:|"]
        for wl, r in s["ratios_embedserve_over_naive"].items():
            lines.append(f"| {wl} | {fmt_number(r['throughput'], 2)}x | {fmt_number(r['p50'], 3)} | {fmt_number(r['p99'], 3)} |")
        agree = s.get("agreement")
        if agree:
            lines.append(f"\nanswers on the first {agree['texts']} texts, embedserve vs naive: least term-set Jaccard "
                         f"{agree['min_term_jaccard']}, largest weight difference {agree['max_abs_weight_diff']}")
        if s["failures"]:
            lines.append(f"\nfailures: {s['failures']}")
        lines.append("")
    if "long" in results:
        lines += markdown_long(results["long"])
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--outputs", action="store_true", help="dense only vs all three outputs, one server")
    p.add_argument("--engine", action="store_true", help="dense only vs all three outputs, backend.encode in-process")
    p.add_argument("--splade", action="store_true", help="SPLADE-tiny: embedserve vs naive SparseEncoder server")
    p.add_argument("--long", action="store_true", help="one 8192-token input through a BGE-M3-shaped model")
    p.add_argument("--rounds", type=int, default=3, help="repeat each measurement; medians are reported")
    p.add_argument("--bulk-total", type=int, default=2048, help="texts in the bulk workload (4 clients x 32)")
    p.add_argument("--single-total", type=int, default=1024, help="texts in the single workload (32 clients x 1)")
    p.add_argument("--lengths", choices=sentences_mod.WORKLOADS, default="uniform", help="see run.py --lengths")
    p.add_argument("--sentences", default=None, help="path to the STS TSV file")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each workload run")
    p.add_argument("--timeout", type=float, default=300.0, help="bound per workload run, seconds")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="seconds for a server to become ready")
    p.add_argument("--port", type=int, default=8121, help="embedserve's port")
    p.add_argument("--naive-port", type=int, default=8120, help="the naive sparse server's port")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where built model folders are kept")
    # --outputs
    p.add_argument("--model-folder", default=None,
                   help="--outputs, --engine: a BGE-M3-style folder (default: build_minilm_m3)")
    p.add_argument("--server-args", default="", help="--outputs: extra embedserve serve args (default: auto mode)")
    p.add_argument("--encoding-format", choices=["float", "base64"], default="float",
                   help="--outputs: answer format asked (float answers are fully checked)")
    # --engine
    p.add_argument("--engine-total", type=int, default=2048, help="--engine: texts encoded per round")
    p.add_argument("--engine-device", default="cpu", help="--engine: device of every mode (cpu, cuda)")
    # --splade
    p.add_argument("--splade-folder", default=None, help="--splade: SPLADE folder (default: cognition/model)")
    p.add_argument("--splade-server-args", default="", help="--splade: extra embedserve serve args")
    p.add_argument("--naive-args", default="", help='--splade: extra naive server args, e.g. "--device cuda"')
    # --long
    p.add_argument("--layers", type=int, default=24, help="--long: encoder layers (BGE-M3: 24)")
    p.add_argument("--hidden", type=int, default=1024, help="--long: hidden size (BGE-M3: 1024)")
    p.add_argument("--heads", type=int, default=None, help="--long: attention heads (default hidden/64: 16)")
    p.add_argument("--intermediate", type=int, default=None, help="--long: FFN size (default 4 x hidden: 4096)")
    p.add_argument("--vocab", type=int, default=250002, help="--long: embedding rows (BGE-M3: 250002)")
    p.add_argument("--long-server-args", default="--backend torch --dtype fp32 --request-timeout 0",
                   help="--long: extra embedserve serve args (never --max-batch-tokens)")
    p.add_argument("--long-timeout", type=float, default=3600.0, help="--long: client timeout per request, seconds")
    p.add_argument("--long-encoding-format", choices=["float", "base64"], default="float",
                   help="--long: answer format (float: 8191 x hidden floats as JSON for the multi-vector)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench-results" / "hybrid.json"))
    args = p.parse_args()
    chosen = [n for n in MEASUREMENTS if getattr(args, n)]
    if not chosen:
        p.error(f"choose at least one of {', '.join('--' + n for n in MEASUREMENTS)}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    args.work_dir = args.work_dir.expanduser().resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)

    sents = sentences_mod.load_workload(args.lengths, args.sentences) if set(chosen) - {"long"} else []
    print(f"hybrid benchmark: {', '.join(chosen)}; {args.rounds} round(s); {os.cpu_count()} CPUs; "
          f"{len(sents)} {args.lengths} texts; logs in {log_dir}", flush=True)
    record: dict = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(), "cpu_count": os.cpu_count(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "workloads": {k: {"clients": c, "batch": b} for k, (c, b) in WORKLOADS.items()},
        "commands": {}, "results": {}, "failures": [],
    }
    signal.signal(signal.SIGTERM, _on_sigterm)
    steps = {"outputs": lambda: bench_outputs(args, sents, log_dir, record),
             "engine": lambda: bench_engine(args, sents, record),
             "splade": lambda: bench_splade(args, sents, log_dir, record),
             "long": lambda: bench_long(args, log_dir, record)}
    try:
        for name in chosen:
            try:
                record["results"][name] = steps[name]()
            except RuntimeError as exc:  # a failed start or warm-up: report, go on to the next one
                print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
                record["failures"].append(f"{name}: {exc}")
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    table = markdown(record["results"])
    record["markdown"] = table
    print("\n" + table)
    out.write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    print(f"results written to {out} (and {out.with_suffix('.md').name})")
    r = record["results"]
    bad = bool(record["failures"])
    bad |= any(m["errors"] or m["timed_out"] for k in ("outputs", "splade") if k in r
               for per in r[k]["medians"].values() for m in per.values())
    bad |= "long" in r and any(m["errors"] for m in r["long"]["medians"].values())
    bad |= "engine" in r and bool(r["engine"]["failures"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Rerank side by side: embedserve vs a naive CrossEncoder.predict server vs Infinity, same model.

Each request is one query and 32 documents (passages of ~60 words, five STS-B sentences joined),
sent in Infinity's `/rerank` shape, which all three answer. Two workloads: 4 and 16 closed-loop
clients. Throughput is pairs (documents) scored per second; every answer is checked (status 200,
one result per document, index and relevance_score present), so a server can't look fast by
answering badly. Servers run one at a time (see run.py for why), in rounds that alternate their
order; the medians and the ratios embedserve/naive and embedserve/Infinity are reported.

The model: all-MiniLM-L6-v2's encoder with a random seeded one-label head
(retrieval_models.build_minilm_cross_encoder): ms-marco-MiniLM-L-6-v2's size and shape, whose
weights are not installable here. Infinity runs from its own venv (`--infinity-venv`, with
`infinity-emb[server]` and the CPU torch), as `infinity_emb v2 --engine torch --device cpu`.

    python benchmarks/rerank.py --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import loadgen  # noqa: E402
import sentences as sentences_mod  # noqa: E402
from hybrid_common import PYTHON, embedserve_server, fmt_number, ratio, served_mode  # noqa: E402
from retrieval_models import DEFAULT_WORK_DIR, cached_minilm_cross_encoder  # noqa: E402
from run import HOST, Server, _git_commit  # noqa: E402

DOCUMENTS_PER_REQUEST = 32
WORKLOADS = {"4 clients": 4, "16 clients": 16}
SENTENCES_PER_PASSAGE = 5


def passages(sents: list[str]) -> list[str]:
    """Documents of about 60 words: consecutive sentences joined, in a fixed order."""
    return [" ".join(sents[i:i + SENTENCES_PER_PASSAGE]) for i in range(0, len(sents) - SENTENCES_PER_PASSAGE, SENTENCES_PER_PASSAGE)]


def rerank_body(queries: list[str]):
    """A body builder cycling through `queries`, one per request."""
    turn = {"i": 0}

    def body(texts: list[str]) -> bytes:
        query = queries[turn["i"] % len(queries)]
        turn["i"] += 1
        return orjson.dumps({"query": query, "documents": texts, "top_n": len(texts)})

    return body


def check_rerank(resp: loadgen.Reply, n: int) -> str | None:
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        results = orjson.loads(resp.content)["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"not a rerank answer: {resp.text[:200]}"
    if len(results) != n:
        return f"{len(results)} results for {n} documents"
    if sorted(r["index"] for r in results) != list(range(n)):
        return "results don't cover every document once"
    if any(not isinstance(r.get("relevance_score"), float) for r in results):
        return "a result without a relevance_score"
    return None


def servers(args: argparse.Namespace, folder: Path, log_dir: Path) -> dict[str, Server]:
    naive_cmd = [str(PYTHON), str(BENCH_DIR / "naive_rerank_server.py"), "--host", HOST,
                 "--port", str(args.naive_port), "--model-path", str(folder)]
    found = {
        "naive": Server("naive-rerank", naive_cmd, args.naive_port, ["/health"], log_dir),
        "embedserve": embedserve_server("embedserve-rerank", folder, args.port, args.server_args, log_dir),
    }
    infinity = Path(args.infinity_venv) / "bin" / "infinity_emb"
    if infinity.exists():
        cmd = [str(infinity), "v2", "--model-id", str(folder), "--host", HOST, "--port", str(args.infinity_port),
               "--engine", "torch", "--device", "cpu", *shlex.split(args.infinity_args)]
        found["infinity"] = Server("infinity-rerank", cmd, args.infinity_port, ["/health"], log_dir)
    else:
        print(f"no Infinity at {infinity}: measuring without it", flush=True)
    return found


def run_workload(args, url: str, clients: int, docs: list[str], queries: list[str]) -> dict:
    total = args.requests * DOCUMENTS_PER_REQUEST
    return asyncio.run(loadgen.run_load(
        url, clients, DOCUMENTS_PER_REQUEST, total, sentences=docs, timeout=args.timeout, warmup=args.warmup,
        path="/rerank", make_body=rerank_body(queries), check=check_rerank,
    ))


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None and not r["errors"]]
    return round(statistics.median(values), 2) if values else None


def markdown(summary: dict) -> str:
    names = [n for n in ("embedserve", "naive", "infinity") if n in summary["medians"]]
    lines = ["| workload | " + " | ".join(f"{n} pairs/s" for n in names) + " | vs naive | vs Infinity | "
             + " | ".join(f"{n} p50 / p99 ms" for n in names) + " |",
             "|---" * (1 + 2 * len(names) + 2) + "|"]
    for wl in WORKLOADS:
        m = {n: summary["medians"][n].get(wl, {}) for n in names}
        cells = [fmt_number(m[n].get("pairs_per_s")) for n in names]
        r = summary["ratios"].get(wl, {})
        lat = [f"{fmt_number(m[n].get('p50_ms'), 0)} / {fmt_number(m[n].get('p99_ms'), 0)}" for n in names]
        lines.append(f"| {wl} x {DOCUMENTS_PER_REQUEST} docs | " + " | ".join(cells)
                     + f" | {fmt_number(r.get('vs_naive'), 2)}x | {fmt_number(r.get('vs_infinity'), 2)}x | "
                     + " | ".join(lat) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians are reported")
    p.add_argument("--requests", type=int, default=48, help="requests per workload run (x 32 documents)")
    p.add_argument("--warmup", type=int, default=3, help="untimed requests before each workload run")
    p.add_argument("--timeout", type=float, default=600.0, help="bound per workload run, seconds")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds for a server to become ready")
    p.add_argument("--servers", default="embedserve,naive,infinity", help="which servers, comma-separated")
    p.add_argument("--port", type=int, default=8131, help="embedserve's port")
    p.add_argument("--naive-port", type=int, default=8130)
    p.add_argument("--infinity-port", type=int, default=8132)
    p.add_argument("--server-args", default="", help="extra embedserve serve args (default: auto mode)")
    p.add_argument("--infinity-venv", default="/work/bench-venvs/infinity", help="venv with infinity-emb[server]")
    p.add_argument("--infinity-args", default="", help="extra infinity_emb v2 args")
    p.add_argument("--model-folder", default=None, help="a cross-encoder folder (default: MiniLM + random head)")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where built model folders are kept")
    p.add_argument("--out", default=str(REPO_ROOT / "bench-results" / "rerank.json"))
    args = p.parse_args()
    out = Path(args.out)
    log_dir = out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(args.model_folder).resolve() if args.model_folder else cached_minilm_cross_encoder(args.work_dir)[0]
    sents = sentences_mod.load_sentences()
    docs, queries = passages(sents), sents[1::7][:64]
    chosen = {n: s for n, s in servers(args, folder, log_dir).items() if n in args.servers.split(",")}
    print(f"rerank benchmark: {', '.join(chosen)}; {args.rounds} round(s); {os.cpu_count()} CPUs; model {folder}; "
          f"{len(docs)} passages", flush=True)
    runs: dict[str, dict[str, list[dict]]] = {n: {wl: [] for wl in WORKLOADS} for n in chosen}
    modes: dict[str, str | None] = {}
    for i in range(args.rounds):
        order = list(chosen) if i % 2 == 0 else list(reversed(chosen))
        for name in order:
            server = chosen[name]
            try:
                server.start(args.startup_timeout)
                if name == "embedserve":
                    modes[name] = served_mode(server.port)
                url = f"http://{HOST}:{server.port}"
                for wl, clients in WORKLOADS.items():
                    res = run_workload(args, url, clients, docs, queries)
                    res["pairs_per_s"] = res["sentences_per_s"]
                    runs[name][wl].append(res)
                    print(f" round {i + 1} {name:10s} {wl:10s} {res['pairs_per_s']:8.1f} pairs/s  p50 "
                          f"{res['p50_ms']} ms  p99 {res['p99_ms']} ms  errors {res['errors']} {res['error_samples'][:1]}",
                          flush=True)
            finally:
                server.stop()
    summary: dict = {"medians": {}, "ratios": {}}
    for name in chosen:
        summary["medians"][name] = {
            wl: {k: median_of(rs, src) for k, src in (("pairs_per_s", "pairs_per_s"), ("p50_ms", "p50_ms"), ("p99_ms", "p99_ms"))}
            for wl, rs in runs[name].items()
        }
    for wl in WORKLOADS:
        ours = summary["medians"].get("embedserve", {}).get(wl, {}).get("pairs_per_s")
        summary["ratios"][wl] = {
            "vs_naive": ratio(ours, summary["medians"].get("naive", {}).get(wl, {}).get("pairs_per_s")),
            "vs_infinity": ratio(ours, summary["medians"].get("infinity", {}).get(wl, {}).get("pairs_per_s")),
        }
    record = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "git_commit": _git_commit(),
        "cpu_count": os.cpu_count(), "model_folder": str(folder), "embedserve_served_as": modes.get("embedserve"),
        "commands": {n: s.cmd for n, s in chosen.items()}, "args": {k: str(v) for k, v in vars(args).items()},
        **summary, "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2))
    print("\n" + markdown(summary))
    print(f"\nembedserve served as: {modes.get('embedserve')}; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

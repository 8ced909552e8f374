"""--long of benchmarks/hybrid.py: one input of exactly 8192 tokens, its time and the server's memory.

The model is a random-weight XLM-R of BGE-M3's real shape (`build_m3_shaped`: 24 x 1024, 8194
positions, BGE-M3 heads), so the compute per token is the real model's without downloading it.
Each round sends the input once asking dense only and once asking all three outputs (order
flipping each round) and records seconds and the server's RSS: before, after, and the peak
(VmHWM, reset before each request where the kernel allows, so the peak is that request's).
The server keeps its default --max-batch-tokens: the point is what a default server does with
the longest input BGE-M3 accepts; one token more, with truncate false, must be refused.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import httpx

from hybrid_common import KINDS, embedserve_server, fmt_number, ratio, served_mode
from retrieval_models import M3_MAX_TOKENS, cached_m3_shaped
from run import HOST

LONG_TOKENS = M3_MAX_TOKENS  # the longest input the model takes, exactly
NOTE = ("random weights; tokenizer = the tiny XLM-R Unigram of tests/support/tiny_models.py, so token ids "
        "stay below its small vocabulary (only the first embedding rows are read), which does not change "
        "the compute per token; torch backend only: the ONNX and int8 modes are not in scope here")


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of `pid` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Child processes of `pid` (the RSS figures are the server process's own)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _long_text(folder: Path, tokens: int) -> tuple[str, int]:
    """A text that the model's tokenizer makes exactly `tokens` tokens (special tokens included)."""
    from transformers import AutoTokenizer

    from tests.support.tiny_models import COMMON_WORDS

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    words = [w for w in COMMON_WORDS if len(tok(w, add_special_tokens=False)["input_ids"]) == 1]
    specials = len(tok("", add_special_tokens=True)["input_ids"])
    n = tokens - specials
    text = " ".join(words[k % len(words)] for k in range(n))
    count = len(tok(text, add_special_tokens=True)["input_ids"])
    while count != tokens:  # single-piece words make this exact at once; adjust if not
        n += tokens - count
        text = " ".join(words[k % len(words)] for k in range(n))
        count = len(tok(text, add_special_tokens=True)["input_ids"])
    return text, count


def _count_params(folder: Path) -> int | None:
    """Parameters in the saved weights (informational; None if they can't be read)."""
    try:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), "pt") as fh:
            return sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118 - not iterable
    except Exception as exc:  # noqa: BLE001
        print(f"   (could not count parameters: {exc})", flush=True)
        return None


def _timed_request(client: httpx.Client, url: str, text: str, outputs: list[str], pid: int, fmt: str) -> dict:
    """Send the long text once asking `outputs`: seconds, RSS around it, and whether the answer holds."""
    before = _proc_status(pid)
    reset = _reset_hwm(pid)
    t0 = time.perf_counter()
    resp = client.post(url, json={"input": [text], "outputs": outputs, "truncate": False, "encoding_format": fmt})
    seconds = time.perf_counter() - t0
    after = _proc_status(pid)
    run = {"seconds": round(seconds, 3), "status": resp.status_code, "bytes": len(resp.content),
           "rss_before_mib": round(before["VmRSS"] / 1024, 1), "rss_after_mib": round(after["VmRSS"] / 1024, 1),
           "peak_rss_mib": round(after["VmHWM"] / 1024, 1), "peak_is_per_request": reset}
    if resp.status_code != 200:
        run["error"] = f"HTTP {resp.status_code}: {resp.text[:200]}"
        return run
    body = resp.json()
    run["prompt_tokens"] = body["usage"]["prompt_tokens"]
    item = body["data"][0]
    run["error"] = next((f"{o} missing" for o in outputs if item.get(o) is None), None)
    if run["prompt_tokens"] != LONG_TOKENS:
        run["error"] = f"prompt_tokens {run['prompt_tokens']}, expected {LONG_TOKENS}"
    mv = item.get("multivector")
    if isinstance(mv, list):
        run["multivector_rows"] = len(mv)
    elif isinstance(mv, dict):
        run["multivector_rows"] = mv["shape"][0]
    if item.get("sparse") is not None:
        run["sparse_terms"] = len(item["sparse"]["indices"])
    return run


def _medians(rs: list[dict]) -> dict:
    """Medians over the rounds that answered correctly; errors counted."""
    good = [r for r in rs if not r.get("error")]

    def med(key: str, digits: int) -> float | None:
        return round(statistics.median(r[key] for r in good), digits) if good else None

    return {"seconds": med("seconds", 3), "peak_rss_mib": med("peak_rss_mib", 1),
            "rss_before_mib": med("rss_before_mib", 1), "rss_after_mib": med("rss_after_mib", 1),
            "prompt_tokens": good[0].get("prompt_tokens") if good else None,
            "errors": len(rs) - len(good), "rounds": len(rs)}


def bench_long(args: argparse.Namespace, log_dir: Path, record: dict) -> dict:
    from embedserve.settings import Settings

    default_mbt = Settings.model_fields["max_batch_tokens"].default
    if "--max-batch-tokens" in args.long_server_args:
        raise SystemExit("--long keeps the server's default --max-batch-tokens; drop it from --long-server-args")
    shape = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads or max(1, args.hidden // 64),
             "intermediate": args.intermediate or 4 * args.hidden, "vocab": args.vocab}
    folder, reused = cached_m3_shaped(args.work_dir, **shape)
    params = _count_params(folder)
    text, local_tokens = _long_text(folder, LONG_TOKENS)
    print(f"\n== long: one {LONG_TOKENS}-token input; model {folder} ({'reused' if reused else 'built'}; "
          f"{shape}, {params or '?'} params); --max-batch-tokens default {default_mbt}\n   note: {NOTE}", flush=True)
    if LONG_TOKENS > default_mbt:
        print(f"   warning: {LONG_TOKENS} tokens exceed the default --max-batch-tokens {default_mbt}", flush=True)
    server = embedserve_server("embedserve-long", folder, args.port, args.long_server_args, log_dir)
    record["commands"]["long"] = server.cmd
    url = f"http://{HOST}:{args.port}/v1/encodings"
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    memory: dict = {}
    checks: dict = {}
    mode = None
    try:
        server.start(args.startup_timeout)
        pid = server.proc.pid
        mode = served_mode(args.port)
        print(f" served as: {mode}", flush=True)
        memory["after_start_kib"] = _proc_status(pid)
        memory["child_processes"] = _children(pid)
        with httpx.Client(timeout=args.long_timeout, trust_env=False) as client:
            for kind_name, outputs in KINDS.items():  # untimed warm-up: a short text, each output set
                resp = client.post(url, json={"input": ["hello world"], "outputs": outputs})
                if resp.status_code != 200:
                    raise RuntimeError(f"warm-up {kind_name}: HTTP {resp.status_code}: {resp.text[:200]}")
            # One token more than the limit must be refused (not cut) with truncate false: the limit is 8192.
            over = client.post(url, json={"input": [text + " cat"], "outputs": ["dense"], "truncate": False})
            checks["one_more_token_refused"] = over.status_code in (400, 413, 422)
            checks["one_more_token_status"] = over.status_code
            checks["one_more_token_answer"] = over.text[:300]
            memory["after_warmup_kib"] = _proc_status(pid)
            checks["hwm_reset_supported"] = _reset_hwm(pid)
            for i in range(args.rounds):
                order = list(KINDS) if i % 2 == 0 else list(reversed(KINDS))
                print(f" round {i + 1}/{args.rounds} (order {', '.join(order)})", flush=True)
                for kind_name in order:
                    run = _timed_request(client, url, text, KINDS[kind_name], pid, args.long_encoding_format)
                    runs[kind_name].append(run)
                    print(f"  {kind_name:<6} {run['seconds']:>8.2f} s  tokens {run.get('prompt_tokens')}  "
                          f"RSS {run['rss_before_mib']} -> {run['rss_after_mib']} MiB, peak {run['peak_rss_mib']} MiB"
                          f"{'' if run['peak_is_per_request'] else ' (peak since start: VmHWM reset refused)'}"
                          + (f"  ERROR {run['error']}" if run.get("error") else ""), flush=True)
        memory["at_end_kib"] = _proc_status(pid)
    finally:
        server.stop()
    medians = {kind_name: _medians(rs) for kind_name, rs in runs.items()}
    return {"model_folder": str(folder), "shape": shape, "params": params, "note": NOTE,
            "server_args": args.long_server_args, "served_as": mode, "max_batch_tokens_default": default_mbt,
            "text_tokens_local": local_tokens, "checks": checks, "memory": memory, "medians": medians,
            "time_cost_all_vs_dense": ratio(medians["all"]["seconds"], medians["dense"]["seconds"]),
            "rounds": runs}


def markdown_long(g: dict) -> list[str]:
    """The --long section of the report."""
    f = fmt_number
    sh = g["shape"]
    lines = [(f"### One {LONG_TOKENS}-token input (XLM-R {sh['layers']} layers x {sh['hidden']}, "
              f"{g['params'] or '?'} params; server args `{g['server_args']}`, served as {g['served_as']}, "
              f"--max-batch-tokens {g['max_batch_tokens_default']} (default))"), "",
             "| outputs | seconds | prompt tokens | RSS before MiB | peak RSS (VmHWM) MiB | RSS after MiB | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind_name, outputs in KINDS.items():
        m = g["medians"][kind_name]
        lines.append(f"| {'+'.join(outputs)} | {f(m['seconds'], 2)} | {m['prompt_tokens']} | "
                     f"{f(m['rss_before_mib'])} | {f(m['peak_rss_mib'])} | {f(m['rss_after_mib'])} | {m['errors']} |")
    start_mib = g["memory"].get("after_start_kib", {})
    lines += ["", (f"time cost all vs dense: {f(g['time_cost_all_vs_dense'], 3)}x; server RSS after start "
              f"{f(start_mib.get('VmRSS', 0) / 1024)} MiB (peak while loading {f(start_mib.get('VmHWM', 0) / 1024)} MiB); "
              f"one more token refused with truncate=false: {g['checks'].get('one_more_token_refused')} "
              f"(HTTP {g['checks'].get('one_more_token_status')}); peak RSS per request (VmHWM reset): "
              f"{g['checks'].get('hwm_reset_supported')}"), "", f"note: {g['note']}", ""]
    return lines

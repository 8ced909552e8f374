"""Closed-loop load generator for a JSON POST route, by default OpenAI-shaped /v1/embeddings.

`concurrency` clients each loop: take the next `batch` sentences (round-robin over the
shared sentence list), send them, wait for the answer, repeat, until `total` sentences
have been sent overall. Closed loop means throughput is what the server sustains at that
many outstanding requests, which is how a fleet of synchronous callers behaves.

Every answer is checked (by default: status 200, one embedding per input, right index,
right size); a wrong answer counts as an error and its sentences do not count toward
throughput, so a server cannot look fast by answering badly. A few untimed warm-up requests
first let the server finish lazy initialisation; their answer also fixes the expected
dimension. Other routes (/v1/encodings, TEI's /embed_sparse) pass their own request body
builder and answer checker to `run_load`; the checkers for embedserve's routes are here too.

The whole run is bounded by `timeout` seconds: past it no new request starts and the
in-flight ones are cut off, and the result says timed_out.

    python benchmarks/loadgen.py --url http://127.0.0.1:8100 --concurrency 4 --batch 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import orjson

try:
    from . import sentences as sentences_mod
except ImportError:  # run as a script: the benchmarks folder is sys.path[0]
    import sentences as sentences_mod

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CLIENT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError,)
TIMEOUTS: tuple[type[BaseException], ...] = (httpx.TimeoutException, asyncio.TimeoutError)
try:  # aiohttp costs the client far less CPU per request than httpx, which matters when the
    # load generator shares the server's 2 cores (httpx used ~0.8 core at ~300 requests/s).
    import aiohttp

    CLIENT_ERRORS += (aiohttp.ClientError,)
except ImportError:  # pragma: no cover - httpx only
    aiohttp = None

ENCODING_OUTPUTS = ("dense", "sparse", "multivector")  # what POST /v1/encodings can answer per input


@dataclass
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@asynccontextmanager
async def http_poster(kind: str, target: str, concurrency: int):
    """post(body_bytes, timeout) -> Reply, over one keep-alive connection per client."""
    headers = {"content-type": "application/json"}
    if kind == "aiohttp":
        if aiohttp is None:
            raise RuntimeError("aiohttp is not installed; use --client httpx")
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(body: bytes, timeout: float) -> Reply:
                async with session.post(
                    target, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    return Reply(resp.status, await resp.read())

            yield post
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

            async def post(body: bytes, timeout: float) -> Reply:
                resp = await client.post(target, content=body, headers=headers, timeout=timeout)
                return Reply(resp.status_code, resp.content)

            yield post


# A checker takes an answer and the number of inputs sent; it returns an error or None.
AnswerChecker = Callable[[Reply, int], str | None]
BodyBuilder = Callable[[list[str]], bytes]  # the texts of one request -> its JSON body


def endpoint(url: str, path: str = "/v1/embeddings") -> str:
    """`url` unchanged if it already ends with `path`, else the base URL + `path`."""
    url = url.rstrip("/")
    return url if url.endswith(path) else url + path


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def check_response(resp: Reply, n_inputs: int, dim: int | None) -> tuple[str | None, int | None]:
    """Return (error or None, embedding dimension seen)."""
    if resp.status_code != 200:
        return f"HTTP {resp.status_code}: {resp.text[:200]}", None
    try:
        data = orjson.loads(resp.content)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return f"bad body: {exc!r}", None
    if not isinstance(data, list) or len(data) != n_inputs:
        return f"expected {n_inputs} embeddings, got {len(data) if isinstance(data, list) else data!r}", None
    seen_dim = dim
    for i, item in enumerate(data):
        emb = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(emb, list) or not emb:
            return f"item {i}: no float embedding", None
        if item.get("index", i) != i:
            return f"item {i}: index {item.get('index')}", None
        seen_dim = seen_dim or len(emb)
        if len(emb) != seen_dim:
            return f"item {i}: dimension {len(emb)}, expected {seen_dim}", None
    return None, seen_dim


def _encodings_data(resp: Reply, n: int) -> tuple[list | None, str | None]:
    """The `data` list of a /v1/encodings answer holding `n` items, or what is wrong with the answer."""
    if resp.status_code != 200:
        return None, f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        data = orjson.loads(resp.content)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return None, f"bad body: {exc!r}"
    if not isinstance(data, list) or len(data) != n:
        return None, f"expected {n} items, got {len(data) if isinstance(data, list) else data!r}"
    return data, None


def check_encodings(outputs: list[str]) -> AnswerChecker:
    """Checker for POST /v1/encodings answers (encoding_format float) asking `outputs`."""

    def check(resp: Reply, n: int) -> str | None:
        data, error = _encodings_data(resp, n)
        if error is not None:
            return error
        for i, item in enumerate(data):
            if not isinstance(item, dict) or item.get("index") != i:
                return f"item {i}: index {item.get('index') if isinstance(item, dict) else item!r}"
            for name in ENCODING_OUTPUTS:
                if (name in outputs) != (item.get(name) is not None):
                    return f"item {i}: output {name} {'missing' if name in outputs else 'not asked but sent'}"
            dense = item.get("dense")
            if "dense" in outputs and (not isinstance(dense, list) or not dense):
                return f"item {i}: no dense vector"
            sparse = item.get("sparse")
            if "sparse" in outputs and (
                not isinstance(sparse, dict) or not isinstance(sparse.get("indices"), list)
                or not isinstance(sparse.get("values"), list) or len(sparse["indices"]) != len(sparse["values"])
            ):
                return f"item {i}: bad sparse {str(sparse)[:100]}"
            multi = item.get("multivector")
            if "multivector" in outputs and (not isinstance(multi, list) or not multi or not isinstance(multi[0], list)):
                return f"item {i}: bad multivector"
        return None

    return check


def check_encodings_count(resp: Reply, n: int) -> str | None:
    """Checker for base64 /v1/encodings answers: only the item count (the vectors are not decoded)."""
    return _encodings_data(resp, n)[1]


def json_list(resp: Reply, n: int, what: str) -> tuple[list | None, str | None]:
    """A 200 answer whose body is a JSON list of n items (TEI's shape), or why not."""
    if resp.status_code != 200:
        return None, f"HTTP {resp.status_code}: {resp.text[:200]}"
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        return None, f"bad body: {exc!r}"
    if not isinstance(data, list) or len(data) != n:
        return None, f"expected {n} {what}, got {len(data) if isinstance(data, list) else data!r}"
    return data, None


def tei_embed_checker(dim: int | None = None) -> tuple[AnswerChecker, dict]:
    """Checker for TEI's POST /embed answers: n float lists of one size (learnt from the first if
    not given; the dict it returns holds it)."""
    seen = {"dim": dim}

    def check(resp: Reply, n: int) -> str | None:
        data, error = json_list(resp, n, "vectors")
        if error is not None:
            return error
        for i, vec in enumerate(data):
            if not isinstance(vec, list) or not vec or not isinstance(vec[0], float):
                return f"input {i}: no float vector"
            seen["dim"] = seen["dim"] or len(vec)
            if len(vec) != seen["dim"]:
                return f"input {i}: dimension {len(vec)}, expected {seen['dim']}"
        return None

    return check, seen


def check_tei_sparse(resp: Reply, n: int) -> str | None:
    """Checker for TEI-style POST /embed_sparse answers: per input a list of {index, value}."""
    data, error = json_list(resp, n, "sparse vectors")
    if error is not None:
        return error
    for i, terms in enumerate(data):
        if not isinstance(terms, list) or not terms:
            return f"input {i}: no terms ({str(terms)[:80]})"
        first = terms[0]
        if not isinstance(first, dict) or not isinstance(first.get("index"), int) or "value" not in first:
            return f"input {i}: bad term {first!r}"
    return None


async def run_load(
    url: str,
    concurrency: int,
    batch: int,
    total: int,
    model: str = DEFAULT_MODEL,
    *,
    sentences: list[str] | None = None,
    timeout: float = 300.0,
    warmup: int = 3,
    dim: int | None = None,
    client: str = "aiohttp",
    path: str = "/v1/embeddings",
    make_body: BodyBuilder | None = None,
    check: AnswerChecker | None = None,
) -> dict:
    """Drive the endpoint and return a summary dict (throughput, latency, errors).

    By default the route is /v1/embeddings, the body `{"input": texts, "model": model}` and
    the answer checked by `check_response`, its size learnt from the warm-up answers unless
    `dim` is given. Another route passes `path`, `make_body` (then `model` is unused) and
    `check` (then `dim` is only reported back as given).
    """
    if concurrency < 1 or batch < 1 or total < 1:
        raise ValueError("concurrency, batch and total must be >= 1")
    sents = sentences if sentences is not None else sentences_mod.load_sentences()
    target = endpoint(url, path)
    warming_up = True
    if make_body is None:

        def make_body(texts: list[str]) -> bytes:
            return orjson.dumps({"input": texts, "model": model})

    if check is None:

        def check(resp: Reply, n: int) -> str | None:
            nonlocal dim
            err, seen = check_response(resp, n, dim)
            if warming_up:  # the warm-up answers fix the size the timed ones are held to
                dim = seen
            return err

    deadline = time.monotonic() + timeout
    cursor = 0  # next sentence index; asyncio is single-threaded, so no lock is needed
    assigned = 0  # sentences handed to requests so far
    latencies: list[float] = []
    ok_sentences = ok_requests = 0
    errors: list[str] = []
    timed_out = False

    def next_chunk(n: int) -> list[str]:
        nonlocal cursor
        chunk = [sents[(cursor + k) % len(sents)] for k in range(n)]
        cursor = (cursor + n) % len(sents)
        return chunk

    async with http_poster(client, target, concurrency) as send:

        async def post(texts: list[str]) -> Reply:
            return await send(make_body(texts), max(0.001, deadline - time.monotonic()))

        # Warm-up takes sentences from the end of the list, so the timed run (which starts
        # at the first sentence) does not resend them to a server that might cache.
        cursor = (len(sents) - (warmup * batch) % len(sents)) % len(sents)
        for _ in range(warmup):  # untimed; the default check also learns the embedding size
            texts = next_chunk(batch)
            try:
                err = check(await post(texts), len(texts))
            except CLIENT_ERRORS as exc:
                err = f"{type(exc).__name__}: {exc}"
            if err:
                raise RuntimeError(f"warm-up request to {target} failed: {err}")
        cursor = 0
        warming_up = False

        async def client_loop() -> None:
            nonlocal assigned, ok_sentences, ok_requests, timed_out
            while assigned < total:
                if time.monotonic() >= deadline:
                    timed_out = True
                    return
                n = min(batch, total - assigned)
                assigned += n
                texts = next_chunk(n)
                t0 = time.perf_counter()
                try:
                    err = check(await post(texts), n)
                except TIMEOUTS:
                    timed_out, err = True, "timeout"
                except CLIENT_ERRORS as exc:
                    err = f"{type(exc).__name__}: {exc}"
                if err:  # failed requests (often fast rejections) stay out of the latencies
                    errors.append(err)
                else:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    ok_requests += 1
                    ok_sentences += n

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start

    latencies.sort()
    return {
        "url": target,
        "concurrency": concurrency,
        "batch": batch,
        "total": total,
        "sentences_ok": ok_sentences,
        "requests_ok": ok_requests,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "timed_out": timed_out,
        "elapsed_s": round(elapsed, 3),
        "sentences_per_s": round(ok_sentences / elapsed, 2) if elapsed > 0 else 0.0,
        "requests_per_s": round(ok_requests / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "dim": dim,
        "client": client,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description="Closed-loop load generator for /v1/embeddings.")
    parser.add_argument("--url", default="http://127.0.0.1:8100", help="base URL or full endpoint")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="inputs per request")
    parser.add_argument("--total", type=int, default=2048, help="sentences to send in all")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=300.0, help="overall bound in seconds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--dim", type=int, default=None, help="expected size (default: from warm-up)")
    parser.add_argument("--sentences", default=None, help="path to the STS TSV file")
    parser.add_argument("--lengths", choices=sentences_mod.WORKLOADS, default="sts", help="see run.py --lengths")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="HTTP client library")
    args = parser.parse_args()
    result = asyncio.run(
        run_load(
            args.url, args.concurrency, args.batch, args.total, args.model,
            sentences=sentences_mod.load_workload(args.lengths, args.sentences),
            timeout=args.timeout, warmup=args.warmup, dim=args.dim, client=args.client,
        )
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

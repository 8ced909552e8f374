"""--engine of benchmarks/hybrid.py: dense only vs all three outputs in-process, without HTTP.

--outputs measures through the server, where the sparse and multi-vector answers are also turned
into JSON and sent over the socket, and a multi-vector answer is tokens x dimension floats per
text: that transfer can outweigh the heads themselves. This loads the same minilm-m3 folder with
the backend factory the server uses (`build_backend`), once per mode (auto / torch fp32 / onnx
fp32), and times `backend.encode` over the workload's texts, tokenized and sorted by length into
batches of 32 (as the server's batcher groups similar lengths), asking {embed} vs {embed, sparse,
multivector}. The two task sets alternate within each round (their order flipping each round),
and the median over --rounds is reported as seconds per 1000 texts: the forward pass plus the
heads and nothing else (the batches are built before the clock starts). One caller encodes one batch
at a time, so each mode is built with model_workers=1: its intra-op threads are then all the
physical cores (the server's default 2 workers would leave it half of them).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

from hybrid_common import KINDS, fmt_number, ratio
from retrieval_models import check_bge_m3, minilm_m3_unless_given

ENGINE_MODES = {"auto": ("auto", "auto"), "torch fp32": ("torch", "fp32"), "onnx fp32": ("onnx", "fp32")}
ENGINE_BATCH = 32  # texts per batch, as in --outputs' bulk workload


def _task_sets() -> dict:
    """KINDS' request kinds as the backend's task sets ("dense" -> {embed}, "all" -> all three)."""
    from embedserve.models.tasks import Task

    task_of = {"dense": Task.EMBED, "sparse": Task.SPARSE, "multivector": Task.MULTIVECTOR}
    return {kind_name: frozenset(task_of[o] for o in outputs) for kind_name, outputs in KINDS.items()}


def _batches(backend, texts: list[str]) -> list:
    """The texts tokenized (cut to the model's limit), sorted by length, in padded batches of ENGINE_BATCH."""
    from embedserve.backends.base import Batch

    ids = sorted(backend.tokenize(texts, truncate=True), key=len)
    return [Batch.from_ids(ids[i:i + ENGINE_BATCH], pad_id=backend.pad_id) for i in range(0, len(ids), ENGINE_BATCH)]


def _check_outputs(outputs, names: list[str], n: int) -> None:
    """RuntimeError unless every output asked (KINDS' names: dense, sparse, multivector) came back, one per input."""
    for name in names:
        got = getattr(outputs, name)
        if got is None or len(got) != n:
            raise RuntimeError(f"encode asked {names}: {name} "
                               f"{'missing' if got is None else f'has {len(got)} rows for {n} inputs'}")


def _time_mode(backend, batches: list, task_sets: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds to encode every batch, per task set and round; the task sets alternate."""
    for name, tasks in task_sets.items():  # untimed warm-up (shortest and longest batch) and answer check
        for batch in (batches[0], batches[-1]):
            _check_outputs(backend.encode(batch, tasks), KINDS[name], batch.size)
    times: dict[str, list[float]] = {name: [] for name in task_sets}
    for i in range(rounds):
        order = list(task_sets) if i % 2 == 0 else list(reversed(task_sets))
        for name in order:
            t0 = time.perf_counter()
            for batch in batches:
                backend.encode(batch, task_sets[name])
            times[name].append(time.perf_counter() - t0)
    return times


def bench_engine(args: argparse.Namespace, sents: list[str], record: dict) -> dict:
    from embedserve.backends.factory import build_backend, intra_op_threads
    from embedserve.settings import Settings

    folder, how = minilm_m3_unless_given(args.model_folder, args.work_dir)
    kind_desc = check_bge_m3(folder)
    texts = sents[: args.engine_total]
    task_sets = _task_sets()
    print(f"\n== engine: backend.encode in-process, dense vs dense+sparse+multivector; {len(texts)} texts in "
          f"length-sorted batches of {ENGINE_BATCH}; device {args.engine_device}; model {folder} ({how}): {kind_desc}",
          flush=True)
    modes: dict[str, dict] = {}
    failures: list[str] = []
    for mode_name, (backend_name, dtype) in ENGINE_MODES.items():
        settings = Settings(backend=backend_name, dtype=dtype, device=args.engine_device, model_workers=1)
        try:
            t0 = time.perf_counter()
            backend = build_backend(settings, folder)
            load_s = time.perf_counter() - t0
            info = backend.info
            batches = _batches(backend, texts)
            times = _time_mode(backend, batches, task_sets, args.rounds)
        except Exception as exc:  # noqa: BLE001 - a mode that can't load or run here: report, go on
            print(f"  {mode_name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failures.append(f"{mode_name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            backend = None  # free one model before the next loads
            gc.collect()
        per_1000 = {name: round(statistics.median(ts) * 1000 / len(texts), 4) for name, ts in times.items()}
        modes[mode_name] = {
            "runs_as": f"{info.backend} {info.dtype} {info.device}", "threads": intra_op_threads(settings),
            "load_s": round(load_s, 2),
            "batches": len(batches), "tokens": int(sum(int(b.lengths().sum()) for b in batches)),
            "padded_tokens": sum(b.padded_tokens for b in batches),
            "seconds_per_1000_texts": per_1000,
            "time_cost_all_vs_dense": ratio(per_1000["all"], per_1000["dense"]),
            "rounds_seconds": {name: [round(t, 4) for t in ts] for name, ts in times.items()},
        }
        print(f"  {mode_name:<11} runs as {modes[mode_name]['runs_as']}: dense {per_1000['dense']:.3f} s/1000, "
              f"all {per_1000['all']:.3f} s/1000, all/dense {modes[mode_name]['time_cost_all_vs_dense']}", flush=True)
    record["commands"]["engine"] = {m: f"Settings(backend={b!r}, dtype={d!r}, device={args.engine_device!r}, "
                                       "model_workers=1)"
                                    for m, (b, d) in ENGINE_MODES.items()}
    return {"model_folder": str(folder), "model": kind_desc, "texts": len(texts), "batch": ENGINE_BATCH,
            "device": args.engine_device, "modes": modes, "failures": failures}


def markdown_engine(e: dict) -> list[str]:
    """The --engine section of the report."""
    f = fmt_number
    lines = [(f"### Engine only: backend.encode in-process, no HTTP ({Path(e['model_folder']).name}; {e['texts']} texts, "
              f"length-sorted batches of {e['batch']}; device {e['device']})"), "",
             "| mode | runs as | threads | load s | dense s / 1000 texts | all three s / 1000 texts | time cost all vs dense |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for mode_name, m in e["modes"].items():
        s = m["seconds_per_1000_texts"]
        lines.append(f"| {mode_name} | {m['runs_as']} | {m['threads']} | {f(m['load_s'])} | {f(s['dense'], 3)} | {f(s['all'], 3)} | "
                     f"{f(m['time_cost_all_vs_dense'], 3)}x |")
    if e["failures"]:
        lines.append(f"\nfailures: {e['failures']}")
    lines.append("")
    return lines

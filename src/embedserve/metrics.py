"""Prometheus metrics, one registry per app (so several apps in one process don't clash).

Under `--api-processes N` every process (front-ends and engine) writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, set by processes.py before any
child starts), and /metrics, from whichever front-end answers, adds them up: counters and
histograms summed, queue depth summed over live processes, a model's gauges as the engine set them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from embedserve.backends.base import ModelInfo
from embedserve.engine.worker import EngineObserver

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics(EngineObserver):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._http_children: dict[tuple[str, str, int], tuple] = {}  # see http_request
        self.requests = Counter(
            "embedserve_requests", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.request_duration = Histogram(
            "embedserve_request_duration_seconds", "HTTP request duration.", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "embedserve_queue_time_seconds", "Time a request waited before its first batch ran.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "embedserve_batch_size", "Inputs per inference batch.", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "embedserve_batch_duration_seconds", "Inference time of one batch.", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.input_tokens = Counter(
            "embedserve_input_tokens", "Input tokens embedded (after truncation).", ["model"], registry=r
        )
        self.depth = Gauge(
            "embedserve_queue_depth", "Requests queued or in flight per model.", ["model"], registry=r,
            multiprocess_mode="livesum",
        )

        self.model_info = Gauge(
            "embedserve_model_info", "Loaded models (value 1) and how they run.",
            ["model", "backend", "dtype", "device"], registry=r, multiprocess_mode="livemax",
        )
        self.fidelity = Gauge(
            "embedserve_model_fidelity_cosine",
            "Cosine of the serving mode's vectors to the fp32 reference on the calibration set.",
            ["model", "stat"], registry=r, multiprocess_mode="livemax",
        )
        self._model_series: dict[str, list[tuple[Gauge, tuple[str, ...]]]] = {}  # to remove on unload
        self.memory = Gauge(
            "embedserve_model_resident_bytes", "Resident memory the model added when it loaded.", ["model"], registry=r,
            multiprocess_mode="livemax",
        )

    # EngineObserver hooks
    def model_loaded(self, model: str, info: ModelInfo, memory_bytes: int | None) -> None:
        series = [(self.model_info, (model, info.backend, info.dtype, info.device), 1)]
        if info.fidelity is not None:
            series += [
                (self.fidelity, (model, "mean"), info.fidelity.mean_cosine),
                (self.fidelity, (model, "min"), info.fidelity.min_cosine),
            ]
        if memory_bytes is not None:
            series.append((self.memory, (model,), memory_bytes))
        for gauge, labels, value in series:
            gauge.labels(*labels).set(value)
        self._model_series[model] = [(gauge, labels) for gauge, labels, _ in series]

    def model_unloaded(self, model: str) -> None:
        for gauge, labels in self._model_series.pop(model, []):
            if MULTIPROCESS:  # the value stays in this process's file: 0 there, as good as gone
                gauge.labels(*labels).set(0)
            gauge.remove(*labels)

    def batch_done(self, model: str, size: int, tokens: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.batch_seconds.labels(model).observe(seconds)

    def queue_time(self, model: str, seconds: float) -> None:
        self.queue_seconds.labels(model).observe(seconds)

    def queue_depth(self, model: str, depth: int) -> None:
        self.depth.labels(model).set(depth)

    def tokens(self, model: str, count: int) -> None:
        self.input_tokens.labels(model).inc(count)

    # HTTP
    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # The labelled children are kept: labels() validates and locks on every call, a cost each of
        # the thousands of 429s a second under overload paid (route templates, methods and statuses
        # are few, so the cache stays small).
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.requests.labels(route, method, str(status)), self.request_duration.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if MULTIPROCESS:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

"""Gateway metrics: a few dict increments per request on the hot path; prometheus-client renders them at
scrape time through a custom collector (its own metric objects would cost a lock per update)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

# retrieval is milliseconds (bench/bench_rag.py: p50 0.7 ms, p99 5-9 ms at 100k chunks)
RAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[int]] = {}  # model -> per-bucket counts (+Inf last)
        self._latency_sum: dict[str, float] = {}
        self._latency_count: dict[str, int] = {}
        self._rag: dict[str, list[int]] = {}  # index -> per-bucket counts (+Inf last)
        self._rag_sum: dict[str, float] = {}
        # model -> callables reporting live figures (the limiters own them)
        self.gauges: dict[str, tuple[Callable[[], int], Callable[[], int]]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def observe(self, model: str, status: int, seconds: float) -> None:
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self._latency.get(model)
        if counts is None:
            counts = self._latency[model] = [0] * (len(BUCKETS) + 1)
            self._latency_sum[model] = 0.0
            self._latency_count[model] = 0
        counts[bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds; past the last: +Inf
        self._latency_sum[model] += seconds
        self._latency_count[model] += 1

    def observe_retrieval(self, index: str, seconds: float) -> None:
        counts = self._rag.get(index)
        if counts is None:
            counts = self._rag[index] = [0] * (len(RAG_BUCKETS) + 1)
            self._rag_sum[index] = 0.0
        counts[bisect_left(RAG_BUCKETS, seconds)] += 1
        self._rag_sum[index] += seconds

    def upstream_error(self, model: str, kind: str) -> None:
        key = (model, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def render(self) -> str:
        """The Prometheus text exposition (prometheus-client formats it from `collect()`)."""
        return generate_latest(self._registry).decode()

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's custom-collector hook: the counters above, read at scrape time."""
        requests = CounterMetricFamily(
            "lfwrap_gateway_requests",
            "Requests answered, by model and HTTP status.",
            labels=["model", "status"],
        )
        for (model, status), count in sorted(self.requests.items()):
            requests.add_metric([model, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "lfwrap_gateway_request_seconds",
            "Time from request to the last byte of the answer.",
            labels=["model"],
        )
        for model, counts in sorted(self._latency.items()):
            latency.add_metric([model], _cumulative(BUCKETS, counts), self._latency_sum[model])
        yield latency
        retrieval = HistogramMetricFamily(
            "lfwrap_gateway_rag_retrieval_seconds",
            "Time to retrieve chunks and ground a request in them, by index (chat and search).",
            labels=["index"],
        )
        for index, counts in sorted(self._rag.items()):
            retrieval.add_metric([index], _cumulative(RAG_BUCKETS, counts), self._rag_sum[index])
        yield retrieval
        in_flight = GaugeMetricFamily(
            "lfwrap_gateway_in_flight", "Requests in flight to each upstream.", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "lfwrap_gateway_queue_depth", "Requests waiting for a slot at each upstream.", labels=["model"]
        )
        for model, (live, waiting) in sorted(self.gauges.items()):
            in_flight.add_metric([model], live())
            queued.add_metric([model], waiting())
        yield in_flight
        yield queued
        errors = CounterMetricFamily(
            "lfwrap_gateway_upstream_errors",
            "Upstream failures, by model and kind.",
            labels=["model", "kind"],
        )
        for (model, kind), count in sorted(self.upstream_errors.items()):
            errors.add_metric([model, kind], count)
        yield errors


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return buckets

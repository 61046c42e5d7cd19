"""Prometheus text exposition, kept by hand: a few dict increments per request on the hot path."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[int]] = {}  # model -> per-bucket counts (+Inf last)
        self._latency_sum: dict[str, float] = {}
        self._latency_count: dict[str, int] = {}
        # model -> callables reporting live figures (the limiters own them)
        self.gauges: dict[str, tuple[Callable[[], int], Callable[[], int]]] = {}

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

    def upstream_error(self, model: str, kind: str) -> None:
        key = (model, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def render(self) -> str:
        out = [
            "# HELP lfwrap_gateway_requests_total Requests answered, by model and HTTP status.",
            "# TYPE lfwrap_gateway_requests_total counter",
        ]
        for (model, status), count in sorted(self.requests.items()):
            out.append(f'lfwrap_gateway_requests_total{{model="{_label(model)}",status="{status}"}} {count}')
        out += [
            "# HELP lfwrap_gateway_request_seconds Time from request to the last byte of the answer.",
            "# TYPE lfwrap_gateway_request_seconds histogram",
        ]
        for model, counts in sorted(self._latency.items()):
            label = _label(model)
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'lfwrap_gateway_request_seconds_bucket{{model="{label}",le="{le}"}} {running}')
            out.append(
                f'lfwrap_gateway_request_seconds_sum{{model="{label}"}} {self._latency_sum[model]:.6f}'
            )
            out.append(
                f'lfwrap_gateway_request_seconds_count{{model="{label}"}} {self._latency_count[model]}'
            )
        out += [
            "# HELP lfwrap_gateway_in_flight Requests in flight to each upstream.",
            "# TYPE lfwrap_gateway_in_flight gauge",
        ]
        out += [
            f'lfwrap_gateway_in_flight{{model="{_label(m)}"}} {g[0]()}'
            for m, g in sorted(self.gauges.items())
        ]
        out += [
            "# HELP lfwrap_gateway_queue_depth Requests waiting for a slot at each upstream.",
            "# TYPE lfwrap_gateway_queue_depth gauge",
        ]
        out += [
            f'lfwrap_gateway_queue_depth{{model="{_label(m)}"}} {g[1]()}'
            for m, g in sorted(self.gauges.items())
        ]
        out += [
            "# HELP lfwrap_gateway_upstream_errors_total Upstream failures, by model and kind.",
            "# TYPE lfwrap_gateway_upstream_errors_total counter",
        ]
        for (model, kind), count in sorted(self.upstream_errors.items()):
            out.append(
                f'lfwrap_gateway_upstream_errors_total{{model="{_label(model)}",kind="{kind}"}} {count}'
            )
        return "\n".join(out) + "\n"

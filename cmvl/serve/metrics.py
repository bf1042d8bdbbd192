"""The service's Prometheus metrics (`GET /metrics`, the text exposition format), in a registry of its own so two
apps in one process (tests) count apart: requests by route and status, their latency, the batch sizes, the queue
depth."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self, routes: set[str]) -> None:
        self.routes = routes  # paths counted by name; anything else is "other" (no label per probed path)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cmvl_serve_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "cmvl_serve_request_seconds",
            "time from a request's arrival to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cmvl_serve_batch_size",
            "requests answered by one forward pass",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("cmvl_serve_queue_depth", "requests waiting for a batch", registry=self.registry)

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        route = self.route(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

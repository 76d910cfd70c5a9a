"""Prometheus metrics, named after TF Serving's with an ``inpaint_`` prefix.

| ours | TF Serving's |
|---|---|
| ``inpaint_request_count`` | ``:tensorflow:serving:request_count`` |
| ``inpaint_request_latency`` (µs) | ``:tensorflow:serving:request_latency`` |
| ``inpaint_runtime_latency`` (µs) | ``:tensorflow:serving:runtime_latency`` |
| ``inpaint_batching_session_queuing_latency`` (µs) | ``:tensorflow:serving:batching_session:queuing_latency`` |
| ``inpaint_batching_session_batch_size`` | ``:tensorflow:serving:batching_session:input_batch_size`` |
| ``inpaint_model_versions_loaded`` | — |

Request counts and latencies carry a ``protocol`` label: ``tfserving`` (TF Serving's gRPC and REST APIs) or
``v2`` (the Open Inference Protocol, ``v2_api``). Latencies are in microseconds, as TF Serving's are. Each server has its own
registry, so several can live in one process (the tests do). Every request
looks up its labelled children, so those are cached (``_CachedChildren``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MICROSECOND_BUCKETS = tuple(b * 1000.0 for b in (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000,
                                                   2500, 5000, 10000, 30000))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _CachedChildren:
    """``labels(*values)`` answered from a dict once a child exists.

    prometheus_client's own ``labels`` validates the values, converts each to
    ``str`` and takes a lock on every call; a request calls it several times.
    Removing children drops the cache, so no stale child is ever returned.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._children: dict[tuple, object] = {}

    def labels(self, *values, **by_name):
        if by_name:
            return super().labels(*values, **by_name)
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = super().labels(*values)
        return child

    def remove(self, *values) -> None:
        self._children.clear()
        super().remove(*values)

    def remove_by_labels(self, labels: dict[str, str]) -> None:
        self._children.clear()
        super().remove_by_labels(labels)

    def clear(self) -> None:
        self._children.clear()
        super().clear()


class CachedCounter(_CachedChildren, Counter):
    pass


class CachedGauge(_CachedChildren, Gauge):
    pass


class CachedHistogram(_CachedChildren, Histogram):
    pass


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = CachedCounter(
            "inpaint_request_count", "Requests by model, version, API, status code and protocol.",
            ["model_name", "version", "api", "status", "protocol"], registry=self.registry)
        self.requests_in_flight = CachedGauge(
            "inpaint_requests_in_flight", "Requests received and not yet answered (queued or running).",
            ["model_name"], registry=self.registry)
        self.request_latency = CachedHistogram(
            "inpaint_request_latency", "End-to-end request latency in microseconds.",
            ["model_name", "api", "protocol"], buckets=MICROSECOND_BUCKETS, registry=self.registry)
        self.runtime_latency = CachedHistogram(
            "inpaint_runtime_latency", "Model execution time per batch in microseconds.",
            ["model_name"], buckets=MICROSECOND_BUCKETS, registry=self.registry)
        self.queuing_latency = CachedHistogram(
            "inpaint_batching_session_queuing_latency", "Time a request waited before its batch ran, microseconds.",
            ["model_name"], buckets=MICROSECOND_BUCKETS, registry=self.registry)
        self.batch_size = CachedHistogram(
            "inpaint_batching_session_batch_size", "Images per model execution.",
            ["model_name"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.versions_loaded = CachedGauge(
            "inpaint_model_versions_loaded", "Model versions in the AVAILABLE state.",
            ["model_name"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

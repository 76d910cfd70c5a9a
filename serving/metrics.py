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

Labels take only values the server knows: the names of the models it serves (those of its config, which
an operator writes), version numbers and status code names. A request naming any other model (a client's
string, perhaps megabytes long) is counted under ``model_name="_unknown"``, so clients cannot grow the
registry or the ``/metrics`` page; a model removed from the config takes its series with it. Version labels
(``canary``) are never a metrics label: a request by label is counted under the version it reached. The
``api`` and ``protocol`` labels are constants of the code.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MICROSECOND_BUCKETS = tuple(b * 1000.0 for b in (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000,
                                                   2500, 5000, 10000, 30000))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_LABEL = "_unknown"  # what a label value the server does not know is recorded as

LabelRule = Callable[[str], bool]
_VERSION_LABEL = re.compile(r"\d{1,19}|")  # an int64 version number, or "" (the request reached no version)
STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)


def is_version_label(value: str) -> bool:
    return _VERSION_LABEL.fullmatch(value) is not None


class _CachedChildren:
    """``labels(*values)`` answered from a dict once a child exists, and only for values its rules allow.

    prometheus_client's own ``labels`` validates the values, converts each to
    ``str`` and takes a lock on every call; a request calls it several times.
    Removing children drops the cache, so no stale child is ever returned.
    A value that a label's rule (``only``) refuses becomes ``UNKNOWN_LABEL``
    before anything is stored, so neither the children nor the cache hold it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._children: dict[tuple, object] = {}
        self._rules: tuple[LabelRule | None, ...] = ()

    def only(self, **rules: LabelRule):
        """Record a value of label ``name`` only where ``rules[name](value)`` holds, else ``UNKNOWN_LABEL``."""
        unknown = set(rules) - set(self._labelnames)
        if unknown:
            raise ValueError(f"{self._name} has no label(s) {sorted(unknown)}")
        self._rules = tuple(rules.get(name) for name in self._labelnames)
        self._children.clear()
        return self

    def labels(self, *values, **by_name):
        if by_name:
            if values or set(by_name) != set(self._labelnames):
                return super().labels(*values, **by_name)  # prometheus_client's own error
            values = tuple(by_name[name] for name in self._labelnames)
        child = self._children.get(values)
        if child is None:
            allowed = self._allowed(values)
            child = self._children.get(allowed)
            if child is None:
                child = self._children[allowed] = super().labels(*allowed)
        return child

    def _allowed(self, values: tuple) -> tuple:
        if not self._rules or len(values) != len(self._rules):
            return values  # no rules, or the wrong count: prometheus_client says so
        return tuple(value if rule is None or rule(str(value)) else UNKNOWN_LABEL
                     for value, rule in zip(values, self._rules))

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
    """The server's metrics; ``model_names`` are the model names its labels record (others: ``_unknown``)."""

    def __init__(self, model_names: str | Iterable[str] = "inpaint"):
        self.model_names = frozenset([model_names] if isinstance(model_names, str) else model_names)
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
        self._bound_labels()

    def _bound_labels(self) -> None:
        """Each label that a request's strings reach takes only values this server knows."""
        rules = {"model_name": self._is_served, "version": is_version_label,
                 "status": STATUS_NAMES.__contains__}
        for metric in self._by_model():
            metric.only(**{name: rule for name, rule in rules.items() if name in metric._labelnames})

    def _is_served(self, name: str) -> bool:
        return name in self.model_names

    def _by_model(self) -> tuple:
        return (self.request_count, self.requests_in_flight, self.request_latency, self.runtime_latency,
                self.queuing_latency, self.batch_size, self.versions_loaded)

    def set_models(self, names: Iterable[str]) -> None:
        """The models served now (a config was applied): their names are recorded, a removed one's series go."""
        names = frozenset(names)
        if names == self.model_names:
            return
        removed, self.model_names = self.model_names - names, names
        for metric in self._by_model():
            metric._children.clear()  # cached children were looked up under the old names
            for name in removed:
                metric.remove_by_labels({"model_name": name})

    def render(self) -> bytes:
        return generate_latest(self.registry)

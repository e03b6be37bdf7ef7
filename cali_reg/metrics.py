"""What the server counts, in Prometheus' text format, exact across its worker processes.

granian runs the app in several processes; ``prometheus_client``'s multiprocess mode
keeps each process's counts in a memory-mapped file of a shared folder
(``$PROMETHEUS_MULTIPROC_DIR``, which ``cali-reg serve`` makes for each run) and a
scrape of any worker sums the files, so after K requests the counters say K whichever
workers answered. An update costs a lock and a store in the mapped file (about a
microsecond); the label children are looked up once and kept.
"""

from __future__ import annotations

import os

import numpy as np

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets in seconds: single rows answer in well under a millisecond,
# 1,000-row bodies in a few milliseconds.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ERROR_KINDS = (
    "format",
    "columns",
    "value",
    "shape",
    "range",
    "overflow",
    "media_type",
    "not_found",
    "method",
    "too_large",
    "timeout",
)


class Metrics:
    """The server's metrics in one worker process (``DIR_ENV`` must be set before import)."""

    def __init__(self, name: str, version: str, scheme: str, bits: int, features) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # Not in the default registry: a scrape reads every process's files (``scrape``),
        # and an app built twice in one process (tests) must not clash.
        kw = {"registry": None}

        self.requests = Counter(
            "cali_reg_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "code"],
            **kw,
        )
        self.latency = Histogram(
            "cali_reg_request_duration_seconds",
            "Time from the request's arrival to its answer, by endpoint",
            ["endpoint"],
            buckets=BUCKETS,
            **kw,
        )
        self.rows = Counter(
            "cali_reg_rows_predicted", "Rows predicted, by protocol", ["protocol"], **kw
        )
        self.in_flight = Gauge(
            "cali_reg_requests_in_flight",
            "Requests being answered now",
            multiprocess_mode="livesum",
            **kw,
        )
        self.errors = Counter(
            "cali_reg_client_errors",
            "Requests refused with a 4xx, by kind of mistake",
            ["kind"],
            **kw,
        )
        self.outside = Counter(
            "cali_reg_rows_outside_training_range",
            "Rows with a value outside the feature's training range, by feature",
            ["feature"],
            **kw,
        )
        info = Gauge(
            "cali_reg_model_info",
            "The served model: name, version (SHA-256 of its file), scheme and bits",
            ["name", "version", "scheme", "bits"],
            multiprocess_mode="max",
            **kw,
        )
        info.labels(name, version, scheme, str(bits)).set(1)
        # Children made once: a zero shows up before the first event, and no label
        # lookup runs per request.
        self._outside = [self.outside.labels(f) for f in features]
        self._errors = {kind: self.errors.labels(kind) for kind in ERROR_KINDS}
        self._rows = {p: self.rows.labels(p) for p in ("mlflow", "v2")}
        self._by_route: dict = {}

    def observe(
        self,
        endpoint: str,
        status: int,
        seconds: float,
        protocol: str | None = None,
        rows: int = 0,
        outside: np.ndarray | None = None,
        error: str | None = None,
    ) -> None:
        """Count one answered request."""
        key = (endpoint, status)
        children = self._by_route.get(key)
        if children is None:
            children = (self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint))
            self._by_route[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if rows:
            self._rows[protocol].inc(rows)
        if outside is not None:
            for j in np.flatnonzero(outside):
                self._outside[j].inc(int(outside[j]))
        if error is not None:
            child = self._errors.get(error)
            if child is None:
                child = self._errors[error] = self.errors.labels(error)
            child.inc()


def scrape() -> tuple[bytes, str]:
    """The text exposition of every worker's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exits() -> None:
    """Drop this process's live gauges (requests in flight) from later scrapes."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(os.getpid())

"""What the server counts, in Prometheus' text format, exact across its worker processes.

granian runs the app in several processes; ``prometheus_client``'s multiprocess mode
keeps each process's counts in a memory-mapped file of a shared folder
(``$PROMETHEUS_MULTIPROC_DIR``, which ``cali-reg serve`` makes for each run) and a
scrape of any worker sums the files, so after K requests the counters say K whichever
workers answered. The per-request counts are written by ``_Slot``: a store of the new
value at the sample's place in the mapped file, without prometheus_client's lock and
process-id check per update (a syscall), which the serving path, one event-loop thread
in a process made before the metrics, does not need.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left

import numpy as np

_TWO_DOUBLES = struct.Struct("dd")  # a sample in prometheus_client's file: value, timestamp

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


class _Slot:
    """One sample of this process, updated in its memory-mapped file.

    ``value`` is a ``prometheus_client`` value in multiprocess mode (pinned: this reads
    its file and key). The file's mapping is looked up at each update: it is replaced when
    the file grows for a new label value.
    """

    __slots__ = ("file", "pos", "value")

    def __init__(self, value) -> None:
        self.file, key = value._file, value._key
        self.value = value.get()
        self.file.write_value(key, self.value, 0.0)  # gives the sample its place
        self.pos = self.file._positions[key]

    def inc(self, amount: float) -> None:
        self.value += amount
        _TWO_DOUBLES.pack_into(self.file._m, self.pos, self.value, 0.0)


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
        in_flight = Gauge(
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
        self._slots: dict[int, _Slot] = {}
        self.in_flight = self._slot(in_flight._value)
        self._outside = [self._slot(self.outside.labels(f)._value) for f in features]
        self._errors = {kind: self._slot(self.errors.labels(kind)._value) for kind in ERROR_KINDS}
        self._rows = {p: self._slot(self.rows.labels(p)._value) for p in ("mlflow", "v2")}
        # (endpoint, status): (its count, its latency's sum, its latency's buckets)
        self._by_route: dict[tuple[str, int], tuple[_Slot, _Slot, list[_Slot]]] = {}

    def _slot(self, value) -> _Slot:
        """The one slot of a sample (statuses of an endpoint share its latency's)."""
        slot = self._slots.get(id(value))
        if slot is None:
            slot = self._slots[id(value)] = _Slot(value)
        return slot

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
        route = self._by_route.get(key)
        if route is None:
            latency = self.latency.labels(endpoint)
            route = self._by_route[key] = (
                self._slot(self.requests.labels(endpoint, str(status))._value),
                self._slot(latency._sum),
                [self._slot(b) for b in latency._buckets],
            )
        count, total, buckets = route
        count.inc(1)
        total.inc(seconds)
        # the files hold each bucket's own count (the first bound >= seconds, +Inf last);
        # the scrape accumulates them
        buckets[bisect_left(BUCKETS, seconds)].inc(1)
        if rows:
            self._rows[protocol].inc(rows)
        if outside is not None:
            for j in np.flatnonzero(outside):
                self._outside[j].inc(int(outside[j]))
        if error is not None:
            slot = self._errors.get(error)
            if slot is None:
                slot = self._errors[error] = self._slot(self.errors.labels(error)._value)
            slot.inc(1)


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

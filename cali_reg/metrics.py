"""What the server counts, in Prometheus' text format, exact across its worker processes.

granian runs the app in several processes; ``prometheus_client``'s multiprocess mode
keeps each process's counts in a memory-mapped file of a shared folder
(``$PROMETHEUS_MULTIPROC_DIR``, which ``cali-reg serve`` makes for each run) and a
scrape of any worker sums the files, so after K requests the counters say K whichever
workers answered. The per-request counts are written in place: each sample is a float64
of this process's mapped file, added to through a memoryview of the file, without
prometheus_client's lock and process-id check per update (a syscall), which the serving
path, one event-loop thread in a process made before the metrics, does not need.
"""

from __future__ import annotations

import os
from bisect import bisect_left

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
    """The server's metrics in one worker process (``DIR_ENV`` must be set before import).

    ``started`` and ``finished`` are the per-request calls. Each sample is a place in a
    mapped file: (a memoryview of the file as float64s, the sample's index), found once,
    when its labels are first used. A new label value may make prometheus_client grow
    the file and map it anew; every place is then found again (``_locate``).
    """

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
        # lookup runs per request. Their prometheus_client values, then their places.
        self._in_flight_value = in_flight._value
        self._outside_values = [self.outside.labels(f)._value for f in features]
        self._error_values = {kind: self.errors.labels(kind)._value for kind in ERROR_KINDS}
        self._rows_values = {p: self.rows.labels(p)._value for p in ("mlflow", "v2")}
        # (endpoint, status): its count, its latency's sum and buckets (the statuses of
        # an endpoint share its latency's)
        self._route_values: dict[tuple[str, int], tuple] = {}
        self._views: dict[int, tuple[object, memoryview]] = {}
        self._locate()

    def _locate(self) -> None:
        """Find every sample's place in its file (again, after a file may have grown)."""
        place = self._place
        self._in_flight = place(self._in_flight_value)
        self._outside = [place(v) for v in self._outside_values]
        self._errors = {kind: place(v) for kind, v in self._error_values.items()}
        self._rows = {p: place(v) for p, v in self._rows_values.items()}
        self._routes = {key: self._place_route(*v) for key, v in self._route_values.items()}

    def _place(self, value) -> tuple[memoryview, int]:
        """(the file as float64s, the sample's index) of a prometheus_client value."""
        file = value._file  # prometheus_client (pinned): its MmapedDict, mapped at ._m
        _, mapped, view = self._views.get(id(file), (None, None, None))
        if mapped is not file._m:
            view = memoryview(file._m).cast("d")
            self._views[id(file)] = (file, file._m, view)
        # a sample is its value then its time stamp, at a multiple of 8 bytes
        return view, file._positions[value._key] // 8

    def _place_route(self, count, total, buckets) -> tuple:
        counts, i = self._place(count)
        hist, j = self._place(total)
        return counts, i, hist, j, tuple(self._place(b)[1] for b in buckets)

    def _remapped(self) -> bool:
        """Whether a file grew (and was mapped anew) since the places were found."""
        return any(file._m is not mapped for file, mapped, _ in self._views.values())

    def started(self) -> None:
        """A request arrived: one more in flight."""
        view, i = self._in_flight
        view[i] += 1

    def finished(
        self,
        endpoint: str,
        status: int,
        seconds: float,
        protocol: str | None = None,
        rows: int = 0,
        outside: np.ndarray | None = None,
        error: str | None = None,
    ) -> None:
        """Count one answered request, no longer in flight."""
        view, i = self._in_flight
        view[i] -= 1
        route = self._routes.get((endpoint, status))
        if route is None:
            route = self._new_route(endpoint, status)
        counts, i, hist, j, buckets = route
        counts[i] += 1
        hist[j] += seconds
        # the files hold each bucket's own count (the first bound >= seconds, +Inf last);
        # the scrape accumulates them
        hist[buckets[bisect_left(BUCKETS, seconds)]] += 1
        if rows:
            view, i = self._rows[protocol]
            view[i] += rows
        if outside is not None:
            for j in np.flatnonzero(outside):
                view, i = self._outside[j]
                view[i] += int(outside[j])
        if error is not None:
            place = self._errors.get(error)
            if place is None:
                place = self._new_error(error)
            view, i = place
            view[i] += 1

    def _new_route(self, endpoint: str, status: int) -> tuple:
        latency = self.latency.labels(endpoint)
        values = (
            self.requests.labels(endpoint, str(status))._value,
            latency._sum,
            latency._buckets,
        )
        self._route_values[endpoint, status] = values
        if self._remapped():
            self._locate()
        else:
            self._routes[endpoint, status] = self._place_route(*values)
        return self._routes[endpoint, status]

    def _new_error(self, kind: str) -> tuple[memoryview, int]:
        value = self._error_values[kind] = self.errors.labels(kind)._value
        if self._remapped():
            self._locate()
        else:
            self._errors[kind] = self._place(value)
        return self._errors[kind]


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

"""The serve command: an HTTP server speaking MLflow's scoring protocol and KServe's V2.

    cali-reg serve [--host H] [--port P] [--model PATH|quant|float] [--workers N]
                   [--id-column NAME] [--max-body-bytes N] [--timeout SECONDS]
                   [--strict-columns] [--strict-range] [--access-log text|json|off]
                   [--no-metrics]

MLflow's protocol: ``POST /invocations``, ``GET /ping``, ``/health``, ``/version``,
``/metadata``. The Open Inference Protocol (KServe V2, REST): ``GET /v2``,
``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{version}]``
and its ``/ready``, ``POST .../infer``. ``GET /metrics``: Prometheus' text format.
What a request means is decided by ``cali_reg.scoring`` (pure functions); this
module reads bodies, routes, answers, counts (``cali_reg.metrics``) and logs.

The app is an RSGI application run by granian (a Rust HTTP server): measured
against uvicorn and gunicorn on this app, it answered the most single-row requests
per second, and RSGI lets the body be read asynchronously, so a client that stalls
mid-body gets a 408 instead of holding a thread. JSON is parsed with orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import select
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

try:
    import orjson
except ImportError:  # `cali-reg serve` says how to install it; the module still imports
    orjson = None

from cali_reg.errors import UserError
from cali_reg.options import (
    add_model_argument,
    add_strict_arguments,
    check_id_column,
    model_path,
    positive_int,
)

MAX_BODY_BYTES = 16 * 1024 * 1024
TIMEOUT = 30  # seconds: the HTTP/1 header-read timeout (also idle keep-alive) and body timeout
ACCESS_LOGS = ("text", "json", "off")
# How the parent process hands its settings to granian's worker processes.
ENV = "CALI_REG_SERVE"
_JSON = "application/json"
_STDERR_HANDLER = {
    "formatter": "generic",
    "class": "logging.StreamHandler",
    "stream": "ext://sys.stderr",
}
_LOG_PATH_CHARS = 512  # a log line stays one atomic write (below PIPE_BUF) whatever the path
LOG_FLUSH_SECONDS = 0.01  # the longest an access-log line waits in its worker's buffer


class Route(NamedTuple):
    """An endpoint: its label in the metrics, methods, handler, protocol, and V2 model path."""

    endpoint: str
    methods: tuple[str, ...]
    handler: str
    protocol: str  # "mlflow", "v2" or "" (errors answer in that protocol's shape)
    name: str | None = None
    version: str | None = None


_GET = ("GET", "HEAD")
ROUTES = {
    "/invocations": Route("/invocations", ("POST",), "invocations", "mlflow"),
    "/ping": Route("/ping", _GET, "health", "mlflow"),
    "/health": Route("/health", _GET, "health", "mlflow"),
    "/version": Route("/version", _GET, "info", "mlflow"),
    "/metadata": Route("/metadata", _GET, "info", "mlflow"),
    "/metrics": Route("/metrics", _GET, "scrape_metrics", ""),
    "/v2": Route("/v2", _GET, "v2_server", "v2"),
    "/v2/health/live": Route("/v2/health/live", _GET, "v2_health", "v2"),
    "/v2/health/ready": Route("/v2/health/ready", _GET, "v2_health", "v2"),
}
_MODEL_ROUTES = {
    "": ("/v2/models/{name}", _GET, "v2_metadata"),
    "ready": ("/v2/models/{name}/ready", _GET, "v2_ready"),
    "infer": ("/v2/models/{name}/infer", ("POST",), "v2_infer"),
}


def route_of(path: str, v2_route) -> Route | None:
    """The route of ``path``, or None (404); ``v2_route`` is ``cali_reg.scoring.v2_route``."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    v2 = v2_route(path)
    if v2 is None:
        return None
    name, version, action = v2
    endpoint, methods, handler = _MODEL_ROUTES[action]
    return Route(endpoint, methods, handler, "v2", name, version)


# --- the access log ----------------------------------------------------------------------


class _Clock:
    """The access log's time stamp: its text is rebuilt once a millisecond, not per request."""

    second, ms, prefix, text = -1, -1, "", ""

    def stamp(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self.ms:
            self.ms = ms
            second, milli = divmod(ms, 1000)
            if second != self.second:
                self.second = second
                self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
            self.text = f"{self.prefix}{milli:03d}Z"
        return self.text


_clock = _Clock()
# A duration's microseconds after the millisecond as text, as a float's shortest repr
# writes them (".5" for 500, ".07" for 70, ".0" for 0): no float is formatted per line.
_MICROS = tuple(repr(i / 1000)[1:] for i in range(1000))


def access_line(fmt: str, method: str, path: str, status: int, ns: int, rows: int) -> bytes:
    """One access-log line: time (UTC), method, path, status, duration (``ns``) and rows."""
    stamp = _clock.stamp()
    path = path[:_LOG_PATH_CHARS]
    us = (ns + 500) // 1000
    if fmt == "json":
        line = {
            "time": stamp,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": us / 1000,
            "rows": rows,
        }
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)
    ms, micros = divmod(us, 1000)
    line = f"{stamp} {method} {path} {status} {ms}{_MICROS[micros]}ms rows={rows}\n"
    return line.encode("utf-8", "replace")


class AccessLog:
    """One worker's access log on stdout: lines gathered, then written together.

    Each ``os.write`` releases the GIL, and granian's I/O thread, which needs the GIL to
    hand over the next request, may take it; a write per request then costs a hand-over
    of the GIL and back (docs/serving.md, "Access log", has the measurements).
    Once the worker's event loop runs (``start``), lines wait at most
    ``LOG_FLUSH_SECONDS`` and go out in writes of at most PIPE_BUF bytes, which a pipe
    shared by the workers keeps whole; ``stop`` (granian's worker shutdown, after SIGTERM)
    writes what is left. Without a loop (the app called in process), each line is written
    at once.
    """

    def __init__(self, fmt: str, fd: int = 1) -> None:
        self.fmt, self.fd = fmt, fd
        self.lines: list[bytes] = []
        self.size = 0
        self.loop = None
        self.pending = False  # a flush is scheduled on the loop

    def start(self, loop) -> None:
        self.loop = loop

    def stop(self) -> None:
        self.flush()
        self.loop = None

    def add(self, line: bytes) -> None:
        if self.loop is None:
            self._write(line)
            return
        if self.size + len(line) > select.PIPE_BUF:
            self.flush()
        self.lines.append(line)
        self.size += len(line)
        if not self.pending:
            self.pending = True
            self.loop.call_later(LOG_FLUSH_SECONDS, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.pending = False
        self.flush()

    def flush(self) -> None:
        if self.lines:
            data = b"".join(self.lines)
            self.lines.clear()
            self.size = 0
            self._write(data)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.fd, data) :]


# --- the application ----------------------------------------------------------------------


class App:
    """The RSGI application: one instance per granian worker process."""

    def __init__(
        self,
        path: Path,
        id_column: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout: float = TIMEOUT,
        strict_columns: bool = False,
        strict_range: bool = False,
        access_log: str = "off",
        metrics: bool = False,
    ):
        from cali_reg import scoring

        self.scoring = scoring
        self.served = scoring.load_served(
            path, id_column, strict_columns, strict_range, count_outside=metrics
        )
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.access_log = None if access_log == "off" else AccessLog(access_log)
        self.metrics = None
        if metrics:
            from cali_reg.metrics import Metrics

            model = self.served.model
            self.metrics = Metrics(
                self.served.name,
                self.served.version,
                model.scheme,
                model.bits,
                self.served.features,
            )
        self.v2_metadata_body = scoring.v2_model_metadata(self.served)
        self.v2_server_body = scoring.v2_server_metadata()

    def __rsgi_init__(self, loop) -> None:
        if self.access_log is not None:
            self.access_log.start(loop)

    def __rsgi_del__(self, loop) -> None:
        if self.access_log is not None:
            self.access_log.stop()
        if self.metrics is not None:
            from cali_reg.metrics import worker_exits

            worker_exits()

    async def __rsgi__(self, scope, proto):
        if scope.proto != "http":
            return
        start = time.perf_counter_ns()
        metrics = self.metrics
        if metrics is not None:
            metrics.started()
        route = route_of(scope.path, self.scoring.v2_route)
        rows, outside, kind = 0, None, None
        ctype = _JSON
        try:
            if route is None:
                raise self._not_found(scope.path)
            if scope.method not in route.methods:
                raise self.scoring.ClientError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"{scope.method} is not allowed on {scope.path}; use {route.methods[0]}",
                    "method",
                )
            status, body, ctype, rows, outside = await getattr(self, route.handler)(
                scope, proto, route
            )
        except self.scoring.ClientError as err:
            status, kind = err.status, err.kind
            if scope.path.startswith("/v2"):
                body = orjson.dumps({"error": err.message})
            else:
                body = orjson.dumps({"error_code": err.code, "message": err.message})
        except Exception as err:  # a bug: the client gets no traceback, the log gets one
            import traceback

            traceback.print_exc(file=sys.stderr)
            status = 500
            message = f"internal error ({type(err).__name__}); see the server log"
            if scope.path.startswith("/v2"):
                body = orjson.dumps({"error": message})
            else:
                body = orjson.dumps({"error_code": "INTERNAL_ERROR", "message": message})
        headers = [("content-type", ctype)]
        if status in (408, 413):  # the body was not read to its end
            headers.append(("connection", "close"))
        elif status == 405:
            headers.append(("allow", ", ".join(route.methods)))
        # Counted before the answer leaves: a client that reads /metrics right after its
        # answer finds its request there (its log line follows within LOG_FLUSH_SECONDS).
        ns = time.perf_counter_ns() - start
        if metrics is not None:
            metrics.finished(
                "other" if route is None else route.endpoint,
                status,
                ns / 1e9,
                None if route is None else route.protocol,
                rows,
                outside,
                kind,
            )
        log = self.access_log
        if log is not None:
            log.add(access_line(log.fmt, scope.method, scope.path, status, ns, rows))
        proto.response_bytes(status, headers, b"" if scope.method == "HEAD" else body)

    def _not_found(self, path: str):
        return self.scoring.ClientError(
            404,
            "ENDPOINT_NOT_FOUND",
            f"no such path {path!r}; use POST /invocations, GET /ping, /health, /version, "
            f"/metadata, /metrics, or the V2 paths under /v2 (/v2/models/{self.served.name})",
            "not_found",
        )

    # --- handlers: (status, body, content type, rows, outside) ---

    async def health(self, scope, proto, route):
        return 200, b'{"status":"ok"}', _JSON, 0, None

    async def info(self, scope, proto, route):
        return 200, self.served.info, _JSON, 0, None

    async def scrape_metrics(self, scope, proto, route):
        if self.metrics is None:
            raise self.scoring.ClientError(
                404,
                "ENDPOINT_NOT_FOUND",
                "metrics are off (the server was started with --no-metrics)",
                "not_found",
            )
        from cali_reg.metrics import scrape

        body, ctype = scrape()
        return 200, body, ctype, 0, None

    async def invocations(self, scope, proto, route):
        ctype = scope.headers.get("content-type")
        self.scoring.media_type(ctype)  # a wrong charset is refused before the body is read
        body = await self.read_body(scope, proto)
        answer = self.scoring.invocations(body, ctype, self.served)
        return 200, answer.body, _JSON, answer.rows, answer.outside

    async def v2_server(self, scope, proto, route):
        return 200, self.v2_server_body, _JSON, 0, None

    async def v2_health(self, scope, proto, route):
        return 200, b"", _JSON, 0, None

    async def v2_metadata(self, scope, proto, route):
        self.scoring.check_model(self.served, route.name, route.version)
        return 200, self.v2_metadata_body, _JSON, 0, None

    async def v2_ready(self, scope, proto, route):
        self.scoring.check_model(self.served, route.name, route.version)
        return 200, b"", _JSON, 0, None

    async def v2_infer(self, scope, proto, route):
        self.scoring.check_model(self.served, route.name, route.version)
        if scope.headers.get("inference-header-content-length") is not None:
            raise self.scoring.bad_request(
                "binary tensor data is not supported; send the tensors as JSON "
                "(tritonclient: binary_data=False)"
            )
        # The body is JSON whatever the Content-Type says (clients send none, or curl's
        # form type); only a charset other than UTF-8 is refused.
        self.scoring.media_type(scope.headers.get("content-type"))
        body = await self.read_body(scope, proto)
        answer = self.scoring.v2_infer(body, self.served)
        return 200, answer.body, _JSON, answer.rows, answer.outside

    async def read_body(self, scope, proto) -> bytes:
        limit = self.max_body_bytes
        too_large = self.scoring.ClientError(
            413,
            "REQUEST_LIMIT_EXCEEDED",
            f"the body is larger than the server's limit of {limit} bytes; "
            "send fewer rows per request",
            "too_large",
        )
        length = scope.headers.get("content-length")
        try:
            async with asyncio.timeout(self.timeout):
                if length is not None and length.isdigit():
                    if int(length) > limit:
                        raise too_large
                    return await proto()
                parts, size = [], 0
                async for part in proto:
                    size += len(part)
                    if size > limit:
                        raise too_large
                    parts.append(part)
                return b"".join(parts)
        except TimeoutError:
            raise self.scoring.ClientError(
                408,
                "REQUEST_TIMEOUT",
                f"the body did not arrive within {self.timeout:g} s",
                "timeout",
            ) from None


def create_app() -> App:
    """The app of a granian worker, configured by the parent through the environment."""
    settings = json.loads(os.environ[ENV])
    return App(Path(settings.pop("model")), **settings)


# --- the command ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=os.environ.get("CALI_REG_HOST", "127.0.0.1"),
        help="address to bind (default: $CALI_REG_HOST, else 127.0.0.1; the image sets 0.0.0.0)",
    )
    parser.add_argument("--port", type=_port, default=8080, help="port (default: 8080)")
    add_model_argument(parser)
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=_usable_cpus(),
        help="worker processes (default: one per CPU this process may use)",
    )
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help='a column (or key) NAME that a request may add; its values come back as "ids"',
    )
    parser.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=MAX_BODY_BYTES,
        metavar="N",
        help=f"refuse larger request bodies with 413 (default: {MAX_BODY_BYTES})",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=TIMEOUT,
        metavar="SECONDS",
        help=f"close connections idle or sending headers this long, answer 408 to a body "
        f"that takes longer (1 to 60, default: {TIMEOUT})",
    )
    add_strict_arguments(parser)
    parser.add_argument(
        "--access-log",
        choices=ACCESS_LOGS,
        default="text",
        help="one line per request on stdout: text, JSON lines (for log shippers), or off "
        "(default: text)",
    )
    parser.add_argument(
        "--no-metrics",
        action="store_true",
        help="do not count requests, and answer 404 on /metrics",
    )


def _usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset), where the OS tells."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _timeout(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds from 1 to 60")
    return int(text)


def _check_address(host: str, port: int) -> None:
    """One line, not granian's Rust panic, for an address that cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as err:
        reason = err.strerror or str(err)
        raise UserError(
            f"cannot listen on {host}:{port} ({reason}); use another --host or --port"
        ) from None


def main(args: argparse.Namespace) -> None:
    """Load the model (a bad one stops here with one line), then serve until SIGTERM/SIGINT."""
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
    except ImportError:
        granian_missing = True
    else:
        granian_missing = False
    if granian_missing or orjson is None:
        raise UserError("cali-reg serve needs its server: pip install 'cali-reg[serve]'")
    if not args.no_metrics and importlib.util.find_spec("prometheus_client") is None:
        # Not imported here: it must first see PROMETHEUS_MULTIPROC_DIR, set below.
        raise UserError(
            "cali-reg serve's /metrics needs prometheus-client: pip install "
            "'cali-reg[serve]', or start with --no-metrics"
        )
    path = model_path(args.model).resolve()
    settings = {
        "id_column": args.id_column,
        "max_body_bytes": args.max_body_bytes,
        "timeout": args.timeout,
        "strict_columns": args.strict_columns,
        "strict_range": args.strict_range,
        "access_log": args.access_log,
        "metrics": not args.no_metrics,
    }
    from cali_reg.scoring import load_served

    served = load_served(path, args.id_column, args.strict_columns, args.strict_range)
    check_id_column(args.id_column, served.features)  # refuse a bad model before any worker
    _check_address(args.host, args.port)
    os.environ[ENV] = json.dumps({"model": str(path), **settings})
    metrics_dir = None
    if not args.no_metrics:
        # A fresh folder per run: prometheus_client's multiprocess files must not outlive it.
        try:
            metrics_dir = tempfile.mkdtemp(prefix="cali-reg-metrics-")
        except OSError as err:
            raise UserError(
                f"cannot make the metrics folder in {tempfile.gettempdir()} ({err.strerror}); "
                "point TMPDIR at a writable folder (a read-only container: mount one at /tmp), "
                "or start with --no-metrics"
            ) from None
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    server = Granian(
        "cali_reg.serve:create_app",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=args.workers,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=args.timeout * 1000),
        # SIGTERM lets requests in flight finish; a worker still busy after this is killed.
        workers_kill_timeout=args.timeout + 5,
        log_access=False,
        # granian's own messages go to stderr: stdout is the access log alone
        log_dictconfig={"handlers": dict.fromkeys(("console", "access"), _STDERR_HANDLER)},
    )
    try:
        server.serve()
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

"""The serve command: an HTTP server speaking MLflow's scoring protocol.

    cali-reg serve [--host H] [--port P] [--model PATH|quant|float] [--workers N]
                   [--id-column NAME] [--max-body-bytes N] [--timeout SECONDS]

``POST /invocations`` takes what ``mlflow models serve`` takes for a tabular
model: ``application/json`` with exactly one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, or ``text/csv`` with a
header naming the 8 features; it answers ``{"predictions": [...]}``, the same
float64 values as ``cali-reg predict`` gives for the same rows (the parsing and
checks are the predict command's). ``GET /ping`` and ``/health`` answer 200 once
the model is loaded; ``GET /version`` and ``/metadata`` describe the model.
A client mistake is a 4xx with ``{"error_code": ..., "message": ...}``.

The app is an RSGI application run by granian (a Rust HTTP server): measured
against uvicorn and gunicorn on this app, it answered the most single-row
requests per second, and RSGI lets the body be read asynchronously, so a
client that stalls mid-body gets a 408 instead of holding a thread. JSON is
parsed with orjson, three times faster than the standard library on 1,000-row
bodies; the standard library re-parses a body that orjson refuses, so that NaN
or an integer beyond float64 gets the predict command's message.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np

try:
    import orjson
except ImportError:  # `cali-reg serve` says how to install it; the module still imports
    orjson = None

from cali_reg import __version__
from cali_reg.data import FEATURES
from cali_reg.errors import UserError
from cali_reg.model import load_model
from cali_reg.predict import (
    EXPECTED,
    add_model_argument,
    checked_predict,
    csv_chunks,
    json_id,
    json_number,
    model_path,
    object_row,
    positive_int,
)

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MAX_BODY_BYTES = 16 * 1024 * 1024
TIMEOUT = 30  # seconds: the HTTP/1 header-read timeout (also idle keep-alive) and body timeout
# How the parent process hands its settings to granian's worker processes.
ENV = "CALI_REG_SERVE"
_ROUTES = {
    "/invocations": ("POST",),
    "/ping": ("GET", "HEAD"),
    "/health": ("GET", "HEAD"),
    "/version": ("GET", "HEAD"),
    "/metadata": ("GET", "HEAD"),
}
_JSON = [("content-type", "application/json")]
_CSV_TYPES = ("text/csv", "application/csv")  # MLflow's code takes the first, its docs the second


class ClientError(Exception):
    """A request the server refuses: HTTP status, MLflow-style error code, one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _bad(message: str) -> ClientError:
    return ClientError(400, "BAD_REQUEST", message)


# --- parsing a request body into rows ----------------------------------------------


def _loads(body: bytes):
    """The JSON document; the standard library settles what orjson refuses."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _bad(f"the body is not UTF-8 text ({err.reason})") from None
    try:  # accepts NaN, Infinity and huge integers, which the row checks then name
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _bad(
            f"the body is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise _bad("the body is not valid JSON (nested too deeply)") from None


def rows_from_json(body: bytes, id_column: str | None) -> tuple[np.ndarray, list | None]:
    """Features in FEATURES order and the ids (or None) of an MLflow JSON request."""
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise _bad(
            f"expected a JSON object with exactly one of {', '.join(FORMATS)}, got {_type(doc)}"
        )
    keys = [k for k in doc if k in FORMATS]
    others = [k for k in doc if k not in FORMATS and k != "params"]
    if len(keys) != 1 or others:
        got = ", ".join(map(repr, doc)) or "no keys"
        raise _bad(
            f"expected exactly one of {', '.join(FORMATS)} (and optionally params), got {got}"
        )
    if doc.get("params") not in (None, {}):
        raise _bad("this model takes no params; leave params out")
    key = keys[0]
    value = doc[key]
    if key == "dataframe_split":
        X, ids = _split(value, body, id_column)
    elif isinstance(value, dict) and key != "dataframe_records":
        X, ids = _columns(value, id_column)
    elif isinstance(value, list):
        X, ids = _records(value, id_column)
    else:
        allowed = "a list of objects" + (
            "" if key == "dataframe_records" else " or an object of columns"
        )
        raise _bad(f"{key} must be {allowed}, got {_type(value)}")
    if not len(X):
        raise _bad(f"{key} holds no rows")
    return X, ids


def _type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _check_names(names: list, id_column: str | None, what: str) -> str | None:
    """The id column if ``names`` holds it; ClientError for a missing, extra or repeated name."""
    for name in names:
        if not isinstance(name, str):
            raise _bad(f"{what}: {json.dumps(name)} is not a column name (a string)")
        if names.count(name) > 1:
            raise _bad(f"{what}: column {name!r} appears more than once")
    use_id = id_column if id_column in names else None
    for name in names:
        if name not in FEATURES and name != use_id:
            hint = (
                ""
                if id_column
                else "; to pass an id column through, start the server with --id-column NAME"
            )
            raise _bad(
                f"{what}: unexpected column {name!r}; "
                f"the columns must be exactly {EXPECTED} (any order){hint}"
            )
    for feature in FEATURES:
        if feature not in names:
            raise _bad(
                f"{what}: column {feature} is missing; "
                f"the columns must be exactly {EXPECTED} (any order)"
            )
    return use_id


def _split(split, body: bytes, id_column: str | None):
    if not isinstance(split, dict):
        raise _bad(f"dataframe_split must be an object with columns and data, got {_type(split)}")
    extra = [k for k in split if k not in ("columns", "data", "index")]
    if extra:
        raise _bad(
            f"dataframe_split: unexpected key {extra[0]!r}; "
            "give columns and data (and optionally index)"
        )
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list):
        raise _bad("dataframe_split.columns must be a list of column names")
    if not isinstance(data, list):
        raise _bad("dataframe_split.data must be a list of rows")
    use_id = _check_names(columns, id_column, "dataframe_split.columns")
    order = [columns.index(f) for f in FEATURES]
    if use_id is None:
        # The fast path, for numbers only: strings, nulls and ragged rows give numpy
        # another dtype or a ValueError. numpy takes true and false as 1 and 0, so a
        # block holding a 0 or a 1 goes on only if the body has neither word.
        try:
            block = np.array(data)
        except (ValueError, OverflowError):
            block = None
        if (
            block is not None
            and block.dtype.kind in "fi"
            and block.ndim == 2
            and block.shape[1] == len(columns)
        ):
            X = block[:, order].astype(np.float64)
            if np.isfinite(X).all() and not (
                ((X == 0) | (X == 1)).any() and (b"true" in body or b"false" in body)
            ):
                return X, None
    rows, ids = [], []
    for i, row in enumerate(data, start=1):
        if not isinstance(row, list):
            raise _bad(f"row {i}: expected a list of {len(columns)} values, got {_type(row)}")
        if len(row) != len(columns):
            raise _bad(f"row {i}: {len(row)} values, dataframe_split.columns names {len(columns)}")
        rows.append([json_number(row[j], f"row {i}, column {columns[j]}") for j in order])
        if use_id is not None:
            ids.append(json_id(dict(zip(columns, row, strict=True)), use_id, f"row {i}"))
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES)), (ids if use_id else None)


def _records(records: list, id_column: str | None):
    first = records[0] if records else None
    use_id = id_column if isinstance(first, dict) and id_column in first else None
    rows, ids = [], []
    for i, obj in enumerate(records, start=1):
        values, row_id = object_row(obj, f"row {i}", use_id)
        rows.append(values)
        ids.append(row_id)
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES)), (ids if use_id else None)


def _columns(columns: dict, id_column: str | None):
    names = list(columns)
    use_id = _check_names(names, id_column, "inputs")
    lengths = set()
    for name, values in columns.items():
        if not isinstance(values, list):
            raise _bad(f"column {name}: expected a list of values, got {_type(values)}")
        lengths.add(len(values))
    if len(lengths) > 1:
        raise _bad(
            "the columns have different lengths: "
            + ", ".join(f"{n} {len(v)}" for n, v in columns.items())
        )
    n = lengths.pop() if lengths else 0
    X = np.array(
        [
            [json_number(columns[f][i], f"row {i + 1}, column {f}") for f in FEATURES]
            for i in range(n)
        ],
        dtype=np.float64,
    ).reshape(-1, len(FEATURES))
    ids = None
    if use_id:
        ids = [
            json_id({use_id: v}, use_id, f"row {i}") for i, v in enumerate(columns[use_id], start=1)
        ]
    return X, ids


def rows_from_csv(body: bytes, id_column: str | None):
    """Features and ids of a CSV body, parsed and checked as ``cali-reg predict`` does."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _bad(f"the body is not UTF-8 text ({err.reason})") from None
    lines = text.splitlines(keepends=True)
    header = next((line for line in lines if line.strip()), "")
    try:
        names = [name.strip() for name in next(csv.reader([header]), [])]
    except csv.Error:
        names = []
    use_id = id_column if id_column in names else None
    chunks = list(csv_chunks(lines, chunk_rows=len(lines) + 1, id_column=use_id))
    X = np.concatenate([c.X for c in chunks]) if len(chunks) > 1 else chunks[0].X
    ids = [i for c in chunks for i in c.ids] if use_id else None
    return X, ids


# --- the application ------------------------------------------------------------------


def model_info(path: Path, model) -> dict:
    """What /version and /metadata say: enough for a client to tell which model answered."""
    return {
        "server": "cali-reg",
        "version": __version__,
        "model_file": path.name,
        "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "scheme": model.scheme,
        "bits": model.bits,
        "feature_names": list(model.feature_names),
        "payload_bytes": model.payload_bytes,
    }


class App:
    """The RSGI application: one instance per granian worker process."""

    def __init__(
        self,
        path: Path,
        id_column: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout: float = TIMEOUT,
    ):
        self.model = load_model(path)
        if tuple(self.model.feature_names) != tuple(FEATURES):
            raise UserError(f"{path}: its features are not {EXPECTED}")
        self.id_column = id_column
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.info = orjson.dumps(model_info(path, self.model))

    async def __rsgi__(self, scope, proto):
        if scope.proto != "http":
            return
        try:
            status, body, headers = await self.respond(scope, proto)
        except ClientError as err:
            status, headers = err.status, list(_JSON)
            body = orjson.dumps({"error_code": err.code, "message": err.message})
            if err.status in (408, 413):  # the body was not read to its end
                headers.append(("connection", "close"))
            if err.status == 405:
                headers.append(("allow", ", ".join(_ROUTES[scope.path])))
        except Exception as err:  # a bug: the client gets no traceback, the log gets one
            import traceback

            traceback.print_exc(file=sys.stderr)
            status, headers = 500, list(_JSON)
            body = orjson.dumps(
                {
                    "error_code": "INTERNAL_ERROR",
                    "message": f"internal error ({type(err).__name__}); see the server log",
                }
            )
        if scope.method == "HEAD":
            body = b""
        proto.response_bytes(status, headers, body)

    async def respond(self, scope, proto):
        methods = _ROUTES.get(scope.path)
        if methods is None:
            raise ClientError(
                404,
                "ENDPOINT_NOT_FOUND",
                f"no such path {scope.path!r}; "
                "use POST /invocations or GET /ping, /health, /version, /metadata",
            )
        if scope.method not in methods:
            raise ClientError(
                405,
                "METHOD_NOT_ALLOWED",
                f"{scope.method} is not allowed on {scope.path}; use {methods[0]}",
            )
        if scope.path in ("/ping", "/health"):
            return 200, b'{"status":"ok"}', _JSON
        if scope.path in ("/version", "/metadata"):
            return 200, self.info, _JSON
        return 200, await self.invocations(scope, proto), _JSON

    async def invocations(self, scope, proto) -> bytes:
        ctype = scope.headers.get("content-type") or ""
        mime, *params = (part.strip() for part in ctype.split(";"))
        mime = mime.lower()
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
                raise ClientError(
                    415, "UNSUPPORTED_MEDIA_TYPE", f"charset {value.strip()}: send UTF-8"
                )
        if mime != "application/json" and mime not in _CSV_TYPES:
            got = f"Content-Type {ctype!r}" if ctype else "no Content-Type"
            raise ClientError(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"{got}; send application/json (MLflow's dataframe_split, dataframe_records, "
                "instances or inputs) or text/csv with a header naming the features",
            )
        body = await self.read_body(scope, proto)
        if not body.strip():
            raise _bad(
                "the body is empty; send JSON with one of dataframe_split, dataframe_records, "
                f"instances or inputs, or CSV with a header naming {EXPECTED}"
            )
        try:  # the predict command's checks raise UserError, naming the row and column
            if mime == "application/json":
                X, ids = rows_from_json(body, self.id_column)
            else:
                X, ids = rows_from_csv(body, self.id_column)
            y = checked_predict(self.model.predict, X)
        except UserError as err:
            raise _bad(str(err)) from None
        answer = {"predictions": y.tolist()}
        if ids is not None:
            answer["ids"] = ids
        return orjson.dumps(answer)

    async def read_body(self, scope, proto) -> bytes:
        limit = self.max_body_bytes
        too_large = ClientError(
            413,
            "REQUEST_LIMIT_EXCEEDED",
            f"the body is larger than the server's limit of {limit} bytes; "
            "send fewer rows per request",
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
            raise ClientError(
                408, "REQUEST_TIMEOUT", f"the body did not arrive within {self.timeout:g} s"
            ) from None


def create_app() -> App:
    """The app of a granian worker, configured by the parent through the environment."""
    settings = json.loads(os.environ[ENV])
    return App(
        Path(settings["model"]),
        id_column=settings["id_column"],
        max_body_bytes=settings["max_body_bytes"],
        timeout=settings["timeout"],
    )


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
    if args.id_column is not None and (not args.id_column.strip() or args.id_column in FEATURES):
        raise UserError(
            f"--id-column {args.id_column!r}: name a column that is not one of the features"
        )
    path = model_path(args.model).resolve()
    App(path)  # refuse a bad model file before any worker starts
    _check_address(args.host, args.port)
    os.environ[ENV] = json.dumps(
        {
            "model": str(path),
            "id_column": args.id_column,
            "max_body_bytes": args.max_body_bytes,
            "timeout": args.timeout,
        }
    )
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
    )
    server.serve()

"""The core of serving, without a server: a request's body in, an answer or a client error out.

``invocations`` is MLflow's scoring protocol (as MLflow's own ``invocations()``:
body, content type and model in, predictions or a client error out) and ``v2_infer``
the Open Inference Protocol's (KServe V2, REST). Both read rows with
``cali_reg.rows`` and predict with the model, so their values are bit for bit those
of ``cali-reg predict``. No I/O here: ``cali_reg.serve`` reads the bodies, writes the
answers, and counts them. Everything a client can get wrong is a ``ClientError``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson

from cali_reg import __version__
from cali_reg.errors import UserError
from cali_reg.model import load_model
from cali_reg.options import model_name
from cali_reg.rows import (
    MLFLOW_KEYS,
    RangeCheck,
    RowsError,
    Schema,
    check_range,
    checked_predict,
    csv_body,
    json_type,
    mlflow_rows,
    parse_json,
    v2_rows,
)

CSV_TYPES = ("text/csv", "application/csv")  # MLflow's code takes the first, its docs the second
OUTPUT = "predict"  # the name of the V2 output tensor, as MLServer's scikit-learn runtime's
V2_REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")


class ClientError(Exception):
    """A request the server refuses: HTTP status, MLflow error code, one line, a kind to count."""

    def __init__(self, status: int, code: str, message: str, kind: str):
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind


def bad_request(err: RowsError | str, kind: str = "format") -> ClientError:
    if isinstance(err, RowsError):
        return ClientError(400, "BAD_REQUEST", str(err), err.kind)
    return ClientError(400, "BAD_REQUEST", err, kind)


class Served(NamedTuple):
    """The loaded model and how it is served: its name, version, schema and checks."""

    model: object
    name: str  # the artifact name in dvc.yaml (quant-model, float-model), else the file stem
    version: str  # the SHA-256 of the model file, in hex
    schema: Schema
    strict_range: bool
    info: bytes  # the JSON of /version and /metadata
    # The training range, if rows are checked against it: counted (for the metrics) or,
    # with strict_range, refused; None if neither is asked or the model records no range.
    range_check: RangeCheck | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.schema.features


def load_served(
    path: Path,
    id_column: str | None = None,
    strict_columns: bool = False,
    strict_range: bool = False,
    count_outside: bool = True,
) -> Served:
    """The model file at ``path``, ready to serve; UserError (one line) if it cannot be.

    ``count_outside``: answers carry, per feature, the rows outside the training range
    (what the metrics count); off, that check costs nothing unless ``strict_range``.
    """
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    model = load_model(path)
    features = tuple(model.feature_names)
    if id_column is not None and id_column in features:
        raise UserError(f"--id-column {id_column!r}: name a column that is not one of the features")
    if strict_range and model.training_range is None:
        raise UserError(
            f"--strict-range: {path} records no training range (it was made before cali-reg "
            "recorded one); re-run 'dvc repro' to rebuild it"
        )
    version = hashlib.sha256(data).hexdigest()
    name = model_name(Path(path))
    info = {
        "server": "cali-reg",
        "version": __version__,
        "model_name": name,
        "model_file": Path(path).name,
        "model_sha256": version,
        "scheme": model.scheme,
        "bits": model.bits,
        "feature_names": list(features),
        "payload_bytes": model.payload_bytes,
        "training_range": (
            None if model.training_range is None else model.training_range.to_dict()
        ),
    }
    schema = Schema(features, id_column, False, strict_columns)
    range_check = None
    if model.training_range is not None and (strict_range or count_outside):
        range_check = RangeCheck(model.training_range)
    return Served(model, name, version, schema, strict_range, orjson.dumps(info), range_check)


class Answer(NamedTuple):
    """A 200 answer's body, and what the metrics count: rows, and rows outside the range."""

    body: bytes
    rows: int
    outside: np.ndarray | None  # per feature: how many rows lie outside its training range


def predict(served: Served, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions for the rows ``X`` (model order), and per feature the rows outside its range."""
    check, outside = served.range_check, None
    if check is not None:
        outside = check.outside(X)
        if outside is not None and served.strict_range:
            check_range(X, served.features, check.training_range)  # names the first value
    return checked_predict(served.model.predict, X), outside


# --- MLflow's scoring protocol -----------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """The MIME type of a Content-Type header; ClientError 415 for a charset other than UTF-8."""
    mime, *params = (part.strip() for part in (content_type or "").split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            raise ClientError(
                415, "UNSUPPORTED_MEDIA_TYPE", f"charset {value.strip()}: send UTF-8", "media_type"
            )
    return mime.lower()


def invocations(body: bytes, content_type: str | None, served: Served) -> Answer:
    """``POST /invocations``: ``{"predictions": [...]}`` (and ``"ids"``), or a ClientError."""
    mime = media_type(content_type)
    if mime != "application/json" and mime not in CSV_TYPES:
        got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        raise ClientError(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            f"{got}; send application/json (MLflow's {', '.join(MLFLOW_KEYS)}) or text/csv "
            "with a header naming the features",
            "media_type",
        )
    if not body.strip():
        raise bad_request(
            f"the body is empty; send JSON with one of {', '.join(MLFLOW_KEYS)}, "
            f"or CSV with a header naming {served.schema.expected}"
        )
    try:
        if mime == "application/json":
            chunk = mlflow_rows(parse_json(body), served.schema, body)
        else:
            chunk = csv_body(body, served.schema)
        y, outside = predict(served, chunk.X)
    except RowsError as err:
        raise bad_request(err) from None
    answer = {"predictions": y.tolist()}
    if chunk.ids is not None:
        answer["ids"] = chunk.ids
    return Answer(orjson.dumps(answer), len(y), outside)


# --- the Open Inference Protocol (KServe V2) ------------------------------------------------


def v2_server_metadata() -> bytes:
    return orjson.dumps({"name": "cali-reg", "version": __version__, "extensions": []})


def v2_model_metadata(served: Served) -> bytes:
    """The model's name, version, and its tensors: one FP64 input per feature, in order."""
    return orjson.dumps(
        {
            "name": served.name,
            "versions": [served.version],
            "platform": "cali-reg",
            "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in served.features],
            "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
        }
    )


def v2_route(path: str) -> tuple[str, str | None, str] | None:
    """(model name, version or None, '' | 'ready' | 'infer') of a /v2/models/... path."""
    parts = path.split("/")
    if len(parts) < 4 or parts[:3] != ["", "v2", "models"] or not parts[3]:
        return None
    name, rest = parts[3], parts[4:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
        version, rest = rest[1], rest[2:]
    if rest == []:
        return name, version, ""
    if rest in (["ready"], ["infer"]):
        return name, version, rest[0]
    return None


def check_model(served: Served, name: str, version: str | None) -> None:
    """ClientError 404 unless ``name`` (and ``version``, if given) are the served model's."""
    if name != served.name:
        raise ClientError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"no model named {name!r}; this server serves {served.name!r}",
            "not_found",
        )
    if version is not None and version != served.version:
        raise ClientError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"model {name!r} has no version {version!r}; it serves version {served.version} "
            "(the SHA-256 of its file)",
            "not_found",
        )


def _parameters(value: object, what: str) -> dict:
    if not isinstance(value, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in value.values()
    ):
        raise bad_request(f"{what} must be an object of strings, numbers and booleans")
    return value


def v2_infer(body: bytes, served: Served) -> Answer:
    """``POST /v2/models/{name}/infer``: one FP64 output tensor ``predict``, or a ClientError."""
    if not body.strip():
        raise bad_request("the body is empty; send an inference request with inputs")
    try:
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise bad_request(f"expected an inference request object with inputs, got {_kind(doc)}")
        unknown = [k for k in doc if k not in V2_REQUEST_KEYS]
        if unknown:
            raise bad_request(
                f"unexpected key {unknown[0]!r}; an inference request holds "
                + ", ".join(V2_REQUEST_KEYS)
            )
        if "inputs" not in doc:
            raise bad_request("inputs is missing; send the features as input tensors")
        request_id = doc.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise bad_request("id must be a string")
        parameters = doc.get("parameters")
        if parameters is not None:
            _parameters(parameters, "parameters")
        _check_outputs(doc.get("outputs"))
        X = v2_rows(doc["inputs"], served.schema, body)
        if not len(X):
            raise bad_request("the inputs hold no rows", "shape")
        y, outside = predict(served, X)
    except RowsError as err:
        raise bad_request(err) from None
    answer = {"model_name": served.name, "model_version": served.version}
    if request_id is not None:
        answer["id"] = request_id
    if parameters is not None:
        answer["parameters"] = parameters
    answer["outputs"] = [
        {"name": OUTPUT, "shape": [len(y)], "datatype": "FP64", "data": y.tolist()}
    ]
    return Answer(orjson.dumps(answer), len(y), outside)


def _check_outputs(outputs: object) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list):
        raise bad_request('outputs must be a list of {"name": ...} objects')
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != OUTPUT:
            raise bad_request(f"unknown output {_kind(out)}; this model's one output is {OUTPUT!r}")
        if "parameters" in out:
            _parameters(out["parameters"], f"output {OUTPUT!r}: parameters")


def _kind(value: object) -> str:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return repr(value["name"])
    return json_type(value)

"""The rows a model is asked about: every input format, read into the model's column order.

One input layer for ``cali-reg predict``, ``cali-reg serve`` and each protocol:

- CSV with a header, JSON lines (one object per line), and a single JSON document
  whatever its layout: an array of objects, one object, or one of MLflow's envelopes;
- MLflow's envelopes (``dataframe_split``, ``dataframe_records``, ``instances``,
  ``inputs``) and the Open Inference Protocol's (KServe V2) tensors.

The model's ``feature_names`` are the schema: columns are found by name and put in
the model's order, so a model file whose features (and coefficients) are listed in
another order predicts the same. Columns the model does not use are ignored, as MLflow
ignores them for a model with a signature, unless ``Schema.strict_columns`` asks to
refuse them. Every problem is a ``RowsError``: one line naming the row and column,
and a ``kind`` that the server counts. numpy and the standard library only.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

import numpy as np

from cali_reg.errors import UserError

CHUNK_ROWS = 8192
FEW_ROWS = 4  # RangeCheck compares up to this many rows as Python floats
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
FORMATS = ("auto", "csv", "jsonl", "json")
V2_DATATYPES = {"FP64": np.float64, "FP32": np.float32}
V2_INTEGER_DATATYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


class RowsError(UserError):
    """Input that cannot be predicted, in one line; ``kind`` groups it for the metrics.

    Kinds: ``format`` (not CSV/JSON/UTF-8, or the wrong structure), ``columns`` (a
    missing, repeated or refused column), ``value`` (not a finite number), ``shape``
    (a V2 tensor's shape or datatype), ``range`` (outside the training range, with
    ``--strict-range``), ``overflow`` (a prediction beyond float64).
    """

    def __init__(self, message: str, kind: str = "value"):
        super().__init__(message)
        self.kind = kind


class Schema(NamedTuple):
    """What a row must hold: the model's features, in its order, and an optional id column.

    ``id_required``: every row must carry ``id_column`` (predict's ``--id-column``);
    otherwise an input may add it (serve's). ``strict_columns``: refuse other columns.
    """

    features: tuple[str, ...]
    id_column: str | None = None
    id_required: bool = True
    strict_columns: bool = False

    @property
    def expected(self) -> str:
        return ", ".join(self.features)

    def order(self, names: list, what: str) -> tuple[list[int], int | None]:
        """Index in ``names`` of each feature, in the model's order, and of the id column.

        RowsError for a name that is not a string, a repeated name, a missing feature,
        and (with ``strict_columns``) a column that is neither a feature nor the id.
        """
        seen = set()
        for name in names:
            if not isinstance(name, str):
                raise RowsError(
                    f"{what}: {json.dumps(name)} is not a column name (a string)", "columns"
                )
            if name in seen:
                raise RowsError(f"{what}: column {name!r} appears more than once", "columns")
            seen.add(name)
        use_id = self.id_column if self.id_column in seen or self.id_required else None
        if self.strict_columns:
            for name in names:
                if name not in self.features and name != use_id:
                    raise RowsError(
                        f"{what}: unexpected column {name!r}; with --strict-columns the columns "
                        f"must be exactly {self.expected} (any order)",
                        "columns",
                    )
        for feature in self.features:
            if feature not in seen:
                raise RowsError(
                    f"{what}: column {feature} is missing; the model's columns are "
                    f"{self.expected} (any order)",
                    "columns",
                )
        if use_id is not None and use_id not in seen:
            raise RowsError(f"{what}: id column {use_id} is missing", "columns")
        index = {name: i for i, name in enumerate(names)}
        return [index[f] for f in self.features], (None if use_id is None else index[use_id])


class Chunk(NamedTuple):
    """Rows of features in the model's order, and their ids if an id column passes through."""

    X: np.ndarray
    ids: list[str] | None


def json_type(value: object) -> str:
    """A JSON value's kind, as a message names it."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def where(row: int, line: int | None = None) -> str:
    return f"row {row}" + (f" (line {line})" if line is not None else "")


def empty_input(schema: Schema) -> RowsError:
    return RowsError(
        f"input is empty: expected CSV with a header naming {schema.expected}, "
        "or JSON objects with those keys",
        "format",
    )


# --- values -------------------------------------------------------------------------------


def json_number(value: object, at: str) -> float:
    """A JSON value as a finite float; RowsError naming ``at`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowsError(f"{at}: {json.dumps(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        number = math.inf
    if not math.isfinite(number):
        raise RowsError(f"{at}: {value!r} is not a finite number")
    return number


def json_id(value: object, schema: Schema, at: str) -> str:
    """An id as text: a string as it is, a number as JSON writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise RowsError(f"{at}, column {schema.id_column}: the id must be a string or a number")


def _number_problem(cell: str) -> str | None:
    try:
        value = float(cell)
    except ValueError:
        return "is not a number"
    return None if math.isfinite(value) else "is not a finite number"


def object_row(obj: object, at: str, schema: Schema) -> tuple[list[float], str]:
    """The feature values of one JSON object in the model's order, and its id (or '')."""
    if not isinstance(obj, dict):
        raise RowsError(
            f"{at}: expected a JSON object with keys {schema.expected}, got {json_type(obj)}",
            "format",
        )
    use_id = schema.id_column if schema.id_required or schema.id_column in obj else None
    if schema.strict_columns and len(obj) != len(schema.features) + (use_id is not None):
        for key in obj:
            if key not in schema.features and key != use_id:
                raise RowsError(
                    f"{at}: unexpected key {key!r}; with --strict-columns the keys must be "
                    f"exactly {schema.expected}",
                    "columns",
                )
    values = []
    for feature in schema.features:
        if feature not in obj:
            raise RowsError(f"{at}, column {feature}: key missing", "columns")
        values.append(json_number(obj[feature], f"{at}, column {feature}"))
    if use_id is None:
        return values, ""
    if use_id not in obj:
        raise RowsError(f"{at}: id key {use_id!r} missing", "columns")
    return values, json_id(obj[use_id], schema, at)


def _object_chunks(objects: Iterable[tuple[object, str]], schema: Schema, chunk_rows: int):
    objects = iter(objects)
    first = next(objects, None)
    if first is None:
        return
    if not schema.id_required and schema.id_column is not None:
        # An id a request may add: if its first row has it, every row must.
        has_id = isinstance(first[0], dict) and schema.id_column in first[0]
        schema = schema._replace(id_column=schema.id_column if has_id else None, id_required=True)
    with_ids = schema.id_column is not None
    values, ids = [], []
    for obj, at in itertools.chain([first], objects):
        row, row_id = object_row(obj, at, schema)
        values.append(row)
        ids.append(row_id)
        if len(values) == chunk_rows:
            yield Chunk(_block(values, schema), ids if with_ids else None)
            values, ids = [], []
    if values:
        yield Chunk(_block(values, schema), ids if with_ids else None)


def _block(values: list, schema: Schema) -> np.ndarray:
    return np.array(values, dtype=np.float64).reshape(-1, len(schema.features))


# --- CSV ------------------------------------------------------------------------------


def csv_chunks(
    lines: Iterable[str], schema: Schema, chunk_rows: int = CHUNK_ROWS
) -> Iterator[Chunk]:
    """Chunks of up to ``chunk_rows`` rows from CSV text lines.

    The header must name each feature once, in any order; blank lines are skipped.
    A bad header, a row of the wrong length, or a value that is not a finite number
    raises RowsError naming the row and column.
    """
    reader = csv.reader(lines)
    try:
        header = next((r for r in reader if not _blank(r)), None)
        if header is None:
            raise empty_input(schema)
        names = [name.strip() for name in header]
        order, id_index = schema.order(names, "CSV header")
        parse = _csv_parser(names, order, id_index)
        rows, line_nums, n_rows = [], [], 0
        for row in reader:
            if _blank(row):
                continue
            n_rows += 1
            if len(row) != len(names):
                if rows:  # a bad value in an earlier row of this chunk is named first
                    parse(rows, n_rows - len(rows), line_nums)
                raise RowsError(_length_problem(row, names, n_rows, reader.line_num), "format")
            rows.append(row)
            line_nums.append(reader.line_num)
            if len(rows) == chunk_rows:
                yield parse(rows, n_rows - len(rows) + 1, line_nums)
                rows, line_nums = [], []
    except csv.Error as err:
        raise RowsError(f"line {reader.line_num}: malformed CSV ({err})", "format") from None
    if rows:
        yield parse(rows, n_rows - len(rows) + 1, line_nums)
    elif n_rows == 0:
        raise RowsError("the CSV header is there but no data rows follow it", "format")


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _length_problem(row, names, n_row, line) -> str:
    if len(row) < len(names):
        return (
            f"{where(n_row, line)}, column {names[len(row)]}: value missing "
            f"({len(row)} values, the header has {len(names)} columns)"
        )
    return (
        f"{where(n_row, line)}: {len(row)} values, the header has {len(names)} columns "
        f"(extra value {row[len(names)]!r} after column {names[-1]})"
    )


def _csv_parser(names, order, id_index) -> Callable[[list, int, list], Chunk]:
    """rows -> Chunk: the features as floats in the model's order, the first bad cell named.

    Only the model's columns are converted: a column it ignores may hold anything.
    """
    identity = order == list(range(len(names)))
    pick = itemgetter(*order) if len(order) > 1 else (lambda row: (row[order[0]],))

    def parse(rows: list, first_row: int, line_nums: list) -> Chunk:
        try:
            if identity:
                block = np.array(rows, dtype=np.float64)
            else:
                block = np.array(list(map(pick, rows)), dtype=np.float64)
        except ValueError:
            block = None
        if block is not None and np.isfinite(block).all():
            ids = None if id_index is None else [row[id_index] for row in rows]
            return Chunk(block.reshape(-1, len(order)), ids)
        for i, row in enumerate(rows):
            for j in sorted(order):
                problem = _number_problem(row[j])
                if problem:
                    at = where(first_row + i, line_nums[i])
                    raise RowsError(f"{at}, column {names[j]}: {row[j]!r} {problem}")
        raise AssertionError("numpy and float() disagree on this chunk")  # not reachable

    return parse


# --- JSON lines and JSON documents ----------------------------------------------------


def jsonl_chunks(
    lines: Iterable[str], schema: Schema, chunk_rows: int = CHUNK_ROWS
) -> Iterator[Chunk]:
    """Like ``csv_chunks`` for JSON lines: one object per line."""
    n_rows = 0

    def objects():
        nonlocal n_rows
        for line_num, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            n_rows += 1
            at = where(n_rows, line_num)
            try:
                yield json.loads(line), at
            except json.JSONDecodeError as err:
                raise RowsError(
                    f"{at}: not valid JSON ({err.msg} at character {err.pos + 1})", "format"
                ) from None

    yield from _object_chunks(objects(), schema, chunk_rows)
    if n_rows == 0:
        raise empty_input(schema)


def parse_json(text: str | bytes) -> object:
    """A JSON document; RowsError naming where it stops being JSON.

    orjson first (fast); the standard library settles what orjson refuses, so that
    NaN, Infinity and integers beyond float64 reach the row checks, which name them.
    """
    if isinstance(text, bytes):
        try:
            import orjson

            return orjson.loads(text)
        except ImportError:
            pass
        except orjson.JSONDecodeError:
            pass
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise RowsError(f"the body is not UTF-8 text ({err.reason})", "format") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RowsError(
            f"input is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            "format",
        ) from None
    except RecursionError:
        raise RowsError("input is not valid JSON (nested too deeply)", "format") from None


def document_chunks(
    doc: object, schema: Schema, chunk_rows: int = CHUNK_ROWS, body: bytes | None = None
) -> Iterator[Chunk]:
    """The rows of one JSON document: an array of objects, an MLflow envelope, or one object."""
    if isinstance(doc, list):
        if not doc:
            raise empty_input(schema)
        yield from _object_chunks(
            ((obj, where(i)) for i, obj in enumerate(doc, start=1)), schema, chunk_rows
        )
    elif isinstance(doc, dict) and any(key in doc for key in MLFLOW_KEYS):
        yield mlflow_rows(doc, schema, body)
    elif isinstance(doc, dict):
        yield from _object_chunks([(doc, where(1))], schema, chunk_rows)
    else:
        raise RowsError(
            f"expected a JSON array of objects, an object, or one of MLflow's "
            f"{', '.join(MLFLOW_KEYS)}; got {json_type(doc)}",
            "format",
        )


def _is_envelope(line: str) -> bool:
    """True if ``line`` is a whole JSON object that is an MLflow envelope, not a row."""
    try:
        doc = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and any(key in doc for key in MLFLOW_KEYS)


def detect_format(lines: Iterable[str]) -> tuple[str, Iterator[str]]:
    """('csv', 'jsonl' or 'json', the same lines), from the first non-blank line.

    ``[`` starts a JSON document. ``{`` starts JSON lines if that line is a whole
    object (a row), and a single JSON document if it is not (an object written over
    several lines) or if it is an MLflow envelope.
    """
    lines = iter(lines)
    skipped = []
    for line in lines:
        skipped.append(line)
        first = line.lstrip()[:1]
        if not first:
            continue
        if first == "[":
            return "json", itertools.chain(skipped, lines)
        if first != "{":
            return "csv", itertools.chain(skipped, lines)
        try:
            json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            return "json", itertools.chain(skipped, lines)  # one object over several lines
        return ("json" if _is_envelope(line) else "jsonl"), itertools.chain(skipped, lines)
    return "csv", iter(skipped)


def read_chunks(
    stream: Iterable[str], schema: Schema, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS
) -> Iterator[Chunk]:
    """Chunks of rows from a text stream of CSV, JSON lines or one JSON document."""
    try:
        lines = iter(stream)
        if fmt == "auto":
            fmt, lines = detect_format(lines)
        if fmt == "json":
            text = "".join(lines)
            if not text.strip():
                raise empty_input(schema)
            yield from document_chunks(parse_json(text), schema, chunk_rows)
        else:
            chunks = csv_chunks if fmt == "csv" else jsonl_chunks
            yield from chunks(lines, schema, chunk_rows)
    except UnicodeDecodeError as err:
        raise RowsError(
            f"input is not UTF-8 text ({err.reason}); save it as UTF-8", "format"
        ) from None


def csv_body(body: bytes, schema: Schema) -> Chunk:
    """All rows of a CSV request body, in one chunk."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RowsError(f"the body is not UTF-8 text ({err.reason})", "format") from None
    lines = text.splitlines(keepends=True)
    return _concat(list(csv_chunks(lines, schema, chunk_rows=len(lines) + 1)))


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    ids = None if chunks[0].ids is None else [i for c in chunks for i in c.ids]
    return Chunk(np.concatenate([c.X for c in chunks]), ids)


# --- MLflow's envelopes ------------------------------------------------------------------


def mlflow_rows(doc: object, schema: Schema, body: bytes | None = None) -> Chunk:
    """The rows of an MLflow scoring request: exactly one of ``MLFLOW_KEYS`` (and ``params``).

    ``body``, the raw JSON, lets a numeric ``dataframe_split`` take numpy's fast path.
    """
    if not isinstance(doc, dict):
        raise RowsError(
            f"expected a JSON object with exactly one of {', '.join(MLFLOW_KEYS)}, "
            f"got {json_type(doc)}",
            "format",
        )
    keys = [k for k in doc if k in MLFLOW_KEYS]
    others = [k for k in doc if k not in MLFLOW_KEYS and k != "params"]
    if len(keys) != 1 or others:
        got = ", ".join(map(repr, doc)) or "no keys"
        raise RowsError(
            f"expected exactly one of {', '.join(MLFLOW_KEYS)} (and optionally params), got {got}",
            "format",
        )
    if doc.get("params") not in (None, {}):
        raise RowsError("this model takes no params; leave params out", "format")
    key = keys[0]
    value = doc[key]
    if key == "dataframe_split":
        chunk = _split(value, schema, body)
    elif isinstance(value, dict) and key != "dataframe_records":
        chunk = _columns(value, schema)
    elif isinstance(value, list):
        chunks = list(
            _object_chunks(
                ((obj, where(i)) for i, obj in enumerate(value, start=1)), schema, len(value) or 1
            )
        )
        chunk = chunks[0] if chunks else Chunk(np.empty((0, len(schema.features))), None)
    else:
        allowed = "a list of objects" + (
            "" if key == "dataframe_records" else " or an object of columns"
        )
        raise RowsError(f"{key} must be {allowed}, got {json_type(value)}", "format")
    if not len(chunk.X):
        raise RowsError(f"{key} holds no rows", "format")
    return chunk


def _no_booleans(X: np.ndarray, body: bytes | None) -> bool:
    """True unless numpy may have read true/false as 1/0 (a 0 or 1 and the words in the body)."""
    return body is not None and not (
        ((X == 0) | (X == 1)).any() and (b"true" in body or b"false" in body)
    )


def _split(split: object, schema: Schema, body: bytes | None) -> Chunk:
    if not isinstance(split, dict):
        raise RowsError(
            f"dataframe_split must be an object with columns and data, got {json_type(split)}",
            "format",
        )
    extra = [k for k in split if k not in ("columns", "data", "index")]
    if extra:
        raise RowsError(
            f"dataframe_split: unexpected key {extra[0]!r}; "
            "give columns and data (and optionally index)",
            "format",
        )
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list):
        raise RowsError("dataframe_split.columns must be a list of column names", "format")
    if not isinstance(data, list):
        raise RowsError("dataframe_split.data must be a list of rows", "format")
    order, id_index = schema.order(columns, "dataframe_split.columns")
    if id_index is None:
        # The fast path, for numbers only: strings, nulls and ragged rows give numpy
        # another dtype or a ValueError. numpy takes true and false as 1 and 0, so a
        # block holding a 0 or a 1 goes on only if the body has neither word.
        block = _numeric_array(data)
        if block is not None and block.ndim == 2 and block.shape[1] == len(columns):
            X = block[:, order].astype(np.float64)
            if np.isfinite(X).all() and _no_booleans(X, body):
                return Chunk(X, None)
    rows, ids = [], []
    for i, row in enumerate(data, start=1):
        if not isinstance(row, list):
            raise RowsError(
                f"row {i}: expected a list of {len(columns)} values, got {json_type(row)}",
                "format",
            )
        if len(row) != len(columns):
            raise RowsError(
                f"row {i}: {len(row)} values, dataframe_split.columns names {len(columns)}",
                "format",
            )
        rows.append([json_number(row[j], f"row {i}, column {columns[j]}") for j in order])
        if id_index is not None:
            ids.append(json_id(row[id_index], schema, f"row {i}"))
    return Chunk(_block(rows, schema), ids if id_index is not None else None)


def _columns(columns: dict, schema: Schema) -> Chunk:
    names = list(columns)
    order, id_index = schema.order(names, "inputs")
    used = [names[j] for j in order] + ([] if id_index is None else [names[id_index]])
    lengths = {}
    for name in used:
        values = columns[name]
        if not isinstance(values, list):
            raise RowsError(
                f"column {name}: expected a list of values, got {json_type(values)}", "format"
            )
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise RowsError(
            "the columns have different lengths: "
            + ", ".join(f"{n} {length}" for n, length in lengths.items()),
            "format",
        )
    n = next(iter(lengths.values()))
    X = _block(
        [
            [json_number(columns[f][i], f"row {i + 1}, column {f}") for f in schema.features]
            for i in range(n)
        ],
        schema,
    )
    ids = None
    if id_index is not None:
        ids = [
            json_id(v, schema, f"row {i}") for i, v in enumerate(columns[names[id_index]], start=1)
        ]
    return Chunk(X, ids)


# --- the Open Inference Protocol's tensors ------------------------------------------------


def v2_rows(inputs: object, schema: Schema, body: bytes | None = None) -> np.ndarray:
    """The rows of a V2 inference request's ``inputs``, in the model's feature order.

    Either one tensor of shape [N, F] (the features in the model's order), or one
    tensor of shape [N] (or [N, 1]) per feature, named after it (MLServer's ``pd``
    content type). ``data`` is flat or nested as the shape says. FP64 and FP32 for
    the [N, F] tensor; per-feature tensors may also be integers.
    """
    if not isinstance(inputs, list) or not inputs:
        raise RowsError(
            f"inputs must be a non-empty list of tensors, got {json_type(inputs)}", "format"
        )
    tensors = []
    for k, tensor in enumerate(inputs):
        tensors.append(_v2_tensor(tensor, k))
    n_features = len(schema.features)
    if len(tensors) == 1 and len(tensors[0][1]) == 2:
        name, shape, datatype, data = tensors[0]
        if shape[1] != n_features:
            raise RowsError(
                f"input {name!r}: shape {shape} has {shape[1]} columns, the model has "
                f"{n_features} features ({schema.expected}); send shape [N, {n_features}]",
                "shape",
            )
        if datatype not in V2_DATATYPES:
            raise RowsError(f"input {name!r}: datatype {datatype}; send FP64 or FP32", "shape")
        flat = _v2_values(name, shape, datatype, data, body, schema.features)
        return flat.reshape(shape[0], n_features)
    for name, shape, _, _ in tensors:
        if len(shape) == 2 and shape[1] == 1:
            continue
        if len(shape) != 1:
            raise RowsError(
                f"input {name!r}: shape {shape}; send one input of shape [N, {n_features}] "
                f"with the features in the model's order, or one input of shape [N] per "
                f"feature, named after it ({schema.expected})",
                "shape",
            )
    order, _ = schema.order([t[0] for t in tensors], "inputs")
    lengths = {tensors[j][0]: tensors[j][1][0] for j in order}
    if len(set(lengths.values())) > 1:
        raise RowsError(
            "the inputs have different lengths: "
            + ", ".join(f"{n} {length}" for n, length in lengths.items()),
            "shape",
        )
    columns = []
    for j in order:
        name, shape, datatype, data = tensors[j]
        if datatype not in V2_DATATYPES and datatype not in V2_INTEGER_DATATYPES:
            raise RowsError(
                f"input {name!r}: datatype {datatype}; send FP64, FP32 or an integer type",
                "shape",
            )
        columns.append(_v2_values(name, shape, datatype, data, body, (name,)))
    return np.column_stack(columns) if columns else np.empty((0, n_features))


def _v2_tensor(tensor: object, k: int) -> tuple[str, list[int], str, object]:
    if not isinstance(tensor, dict):
        raise RowsError(
            f"inputs[{k}] must be an object with name, shape, datatype and data, "
            f"got {json_type(tensor)}",
            "format",
        )
    for key in ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise RowsError(f"inputs[{k}]: {key} is missing", "format")
    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    if not isinstance(name, str):
        raise RowsError(f"inputs[{k}]: name must be a string, got {json_type(name)}", "format")
    if not (
        isinstance(shape, list)
        and shape
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise RowsError(
            f"input {name!r}: shape must be a list of non-negative integers, got "
            f"{json.dumps(shape)}",
            "shape",
        )
    if not isinstance(datatype, str):
        raise RowsError(f"input {name!r}: datatype must be a string", "shape")
    if not isinstance(tensor["data"], list):
        raise RowsError(
            f"input {name!r}: data must be an array, got {json_type(tensor['data'])}", "format"
        )
    params = tensor.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise RowsError(f"input {name!r}: parameters must be an object", "format")
    return name, shape, datatype, tensor["data"]


def _numeric_array(data) -> np.ndarray | None:
    """``data`` as an array of numbers, for the fast path; None where numpy finds anything
    else (strings, nulls, ragged rows), which the row-by-row checks then name."""
    try:
        block = np.array(data)
    except (ValueError, OverflowError):
        return None
    return block if block.dtype.kind in "fi" else None


def _v2_values(name, shape, datatype, data, body, columns) -> np.ndarray:
    """The tensor's values, flat, as float64 (FP32 through float32); RowsError naming the cell."""
    size = math.prod(shape)
    block = _numeric_array(data)
    if block is not None and (list(block.shape) == shape or block.shape == (size,)):
        flat = block.reshape(-1).astype(np.float64)
        if np.isfinite(flat).all() and _no_booleans(flat, body) and _fits(flat, datatype):
            return _as_datatype(flat, datatype)
    flat = _flatten(data, shape, name)
    if len(flat) != size:
        raise RowsError(
            f"input {name!r}: data holds {len(flat)} values, shape {shape} needs {size}",
            "shape",
        )
    width = len(columns)
    values = []
    for i, value in enumerate(flat):
        at = f"row {i // width + 1}, column {columns[i % width]}"
        values.append(json_number(value, at))
    flat = np.array(values, dtype=np.float64)
    if not _fits(flat, datatype):
        bad = int(np.argmin(_integral(flat)))
        raise RowsError(
            f"row {bad // width + 1}, column {columns[bad % width]}: {flat[bad]!r} is not "
            f"an integer, as datatype {datatype} needs"
        )
    return _as_datatype(flat, datatype)


def _flatten(data: list, shape: list[int], name: str) -> list:
    """``data`` flat, as given or unnested; nesting is allowed only exactly as the shape says."""
    if not any(isinstance(v, list) for v in data):
        return data
    out = []

    def walk(node, depth: int) -> None:
        if depth == len(shape):
            if isinstance(node, list):
                raise RowsError(
                    f"input {name!r}: data is nested deeper than shape {shape}", "shape"
                )
            out.append(node)
            return
        if not isinstance(node, list) or len(node) != shape[depth]:
            raise RowsError(
                f"input {name!r}: data is nested as another shape than {shape}", "shape"
            )
        for item in node:
            walk(item, depth + 1)

    walk(data, 0)
    return out


def _integral(flat: np.ndarray) -> np.ndarray:
    return np.floor(flat) == flat


def _fits(flat: np.ndarray, datatype: str) -> bool:
    return datatype in V2_DATATYPES or bool(_integral(flat).all())


def _as_datatype(flat: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "FP32":
        with np.errstate(over="ignore"):
            as32 = flat.astype(np.float32)
        if not np.isfinite(as32).all():
            i = int(np.argmin(np.isfinite(as32)))
            raise RowsError(f"value {flat[i]!r} does not fit FP32; send FP64")
        return as32.astype(np.float64)
    return flat


# --- the training range and the prediction -------------------------------------------------


def outside_range(X: np.ndarray, training_range) -> np.ndarray:
    """Rows x features: True where a value lies outside the feature's training range."""
    low, high = training_range.low, training_range.high
    return np.less(X, low) | np.greater(X, high)


class RangeCheck:
    """A training range, ready to test each request's rows against (``cali-reg serve``).

    Most rows lie inside, so that answer is made cheap: up to ``FEW_ROWS`` rows are
    compared as Python floats (a numpy call costs more than a row's comparisons), more
    rows in one vectorised comparison; only rows with a value outside are counted by
    feature. As in ``outside_range``, a value equal to a limit is inside, and NaN (which
    the row checks refuse before) is not outside.
    """

    __slots__ = ("_bounds", "training_range")

    def __init__(self, training_range) -> None:
        self.training_range = training_range
        self._bounds = tuple(
            zip(training_range.low.tolist(), training_range.high.tolist(), strict=True)
        )

    def outside(self, X: np.ndarray) -> np.ndarray | None:
        """Per feature, the rows of ``X`` with a value outside its range; None if none has."""
        if len(X) <= FEW_ROWS and self._inside(X.tolist()):
            return None
        out = outside_range(X, self.training_range)
        return out.sum(axis=0) if out.any() else None

    def _inside(self, rows: list) -> bool:
        bounds = self._bounds
        for row in rows:
            for value, (low, high) in zip(row, bounds):  # noqa: B905 (strict= costs a row 0.2 µs)
                if not low <= value <= high:
                    return False
        return True


def check_range(X: np.ndarray, features, training_range, first_row: int = 1) -> None:
    """RowsError naming the first value outside its feature's training range."""
    outside = outside_range(X, training_range)
    if outside.any():
        i, j = np.argwhere(outside)[0]
        raise RowsError(
            f"row {first_row + int(i)}, column {features[j]}: {float(X[i, j])!r} is outside "
            f"the training range [{float(training_range.low[j])!r}, "
            f"{float(training_range.high[j])!r}] (--strict-range)",
            "range",
        )


def checked_predict(predict, X: np.ndarray, first_row: int = 1) -> np.ndarray:
    """``predict(X)``, refusing finite features so large that a prediction is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = predict(X)
    overflow = ~np.isfinite(y)
    if overflow.any():
        row = first_row + int(np.argmax(overflow))
        raise RowsError(
            f"row {row}: the prediction overflows float64; "
            "the feature values are far outside any real house",
            "overflow",
        )
    return y

"""The predict command: median house values for rows of the 8 features.

    cali-reg predict [INPUT] [--model PATH|quant|float] [--format auto|csv|jsonl|json]
                     [--id-column NAME]
    cali-reg predict --sample N

INPUT is a file, or stdin when it is ``-`` or absent. It holds CSV with a header
naming the 8 features as scikit-learn does (any column order), JSON lines (one
object with those 8 keys per line), or a JSON array of such objects; ``auto``
tells them apart by the first non-blank character (``{`` JSON lines, ``[`` a
JSON array). Each input row gives one line on stdout: the prediction in $100k,
as the shortest decimal that reads back as the same float64. With
``--id-column NAME`` each row also carries NAME, and the output is CSV
``NAME,prediction``.

CSV and JSON lines are parsed and predicted in chunks of ``CHUNK_ROWS`` rows,
so memory stays flat however long the input is. A bad row stops the run with
exit code 2 and one line naming its row and column; predictions of earlier
chunks may already be out. Imports numpy and the standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from cali_reg.data import FEATURES, read_table
from cali_reg.errors import UserError
from cali_reg.model import load_model

CHUNK_ROWS = 8192
EXPECTED = ", ".join(FEATURES)
SHORTHANDS = {"quant": "models/quant.json", "float": "models/float.json"}
# The first rows of the test split, features only; written by the split stage so
# that the Docker image can show predictions without the data set.
SAMPLE = "data/sample.csv"
FORMATS = ("auto", "csv", "jsonl", "json")


class Chunk(NamedTuple):
    """Rows of features in FEATURES order, and their ids if an id column passes through."""

    X: np.ndarray
    ids: list[str] | None


# --- where the model is ------------------------------------------------------------


def project_root() -> Path | None:
    """$CALI_REG_HOME, else the nearest folder from here up that holds dvc.yaml."""
    home = os.environ.get("CALI_REG_HOME")
    if home:
        return Path(home)
    here = Path.cwd()
    root = next((d for d in (here, *here.parents) if (d / "dvc.yaml").is_file()), None)
    return None if root is None else Path(os.path.relpath(root))  # short paths in messages


def in_project(rel: str, why: str) -> Path:
    """``rel`` inside the project; UserError outside one."""
    root = project_root()
    if root is None:
        raise UserError(
            f"{why} needs the cali-reg project's {rel}, and this is not inside the project "
            "(no dvc.yaml here or above, and CALI_REG_HOME is not set)"
        )
    return root / rel


def model_path(model: str | None) -> Path:
    """The file of ``--model``: a path, or the shorthand quant/float inside the project."""
    if model is None:
        try:
            return in_project(SHORTHANDS["quant"], "the default model")
        except UserError as err:
            raise UserError(f"{err}; give --model PATH") from None
    if model in SHORTHANDS:
        return in_project(SHORTHANDS[model], f"--model {model}")
    if not Path(model).exists():
        raise UserError(
            f"--model {model}: no such file; give the path of a model file, or quant or float"
        )
    return Path(model)


# --- input ---------------------------------------------------------------------------


def stdin_is_piped() -> bool:
    """True if stdin is a pipe, file or socket; False for a terminal, /dev/null or none."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, ValueError, OSError):
        return False
    return not stat.S_ISCHR(mode)


def open_input(path: str) -> TextIO:
    """A text stream of the input; UTF-8, a leading byte-order mark ignored."""
    if path == "-":
        if sys.stdin is None:
            raise UserError("no input: stdin is closed; give a file or pipe rows on stdin")
        if sys.stdin.isatty():
            raise UserError(
                "no input: give a CSV or JSON file, pipe rows on stdin, or use --sample N"
            )
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None


def detect_format(lines: Iterable[str]) -> tuple[str, Iterator[str]]:
    """('csv', 'jsonl' or 'json', the same lines) from the first non-blank character."""
    lines = iter(lines)
    skipped = []
    for line in lines:
        skipped.append(line)
        first = line.lstrip()[:1]
        if first:
            fmt = {"{": "jsonl", "[": "json"}.get(first, "csv")
            return fmt, itertools.chain(skipped, lines)
    return "csv", iter(skipped)


def _where(row: int, line: int | None = None) -> str:
    return f"row {row}" + (f" (line {line})" if line is not None else "")


def _empty_input() -> UserError:
    return UserError(
        f"input is empty: expected CSV with a header naming {EXPECTED}, "
        "or JSON objects with those keys"
    )


def csv_chunks(
    lines: Iterable[str], chunk_rows: int = CHUNK_ROWS, id_column: str | None = None
) -> Iterator[Chunk]:
    """Chunks of up to ``chunk_rows`` rows from CSV text lines.

    The header must name each feature once, in any order (and ``id_column`` if
    given); blank lines are skipped. A bad header, a row of the wrong length, or
    a value that is not a finite number raises UserError naming the row and column.
    """
    reader = csv.reader(lines)
    try:
        header = next((r for r in reader if not _blank(r)), None)
        if header is None:
            raise _empty_input()
        names = [name.strip() for name in header]
        order, id_index = column_order(names, id_column)
        rows, line_nums, n_rows = [], [], 0
        for row in reader:
            if _blank(row):
                continue
            n_rows += 1
            if len(row) != len(names):
                if rows:  # a bad value in an earlier row of this chunk is named first
                    _to_chunk(rows, names, order, id_index, n_rows - len(rows), line_nums)
                raise UserError(_length_problem(row, names, n_rows, reader.line_num))
            rows.append(row)
            line_nums.append(reader.line_num)
            if len(rows) == chunk_rows:
                yield _to_chunk(rows, names, order, id_index, n_rows - len(rows) + 1, line_nums)
                rows, line_nums = [], []
    except csv.Error as err:
        raise UserError(f"line {reader.line_num}: malformed CSV ({err})") from None
    if rows:
        yield _to_chunk(rows, names, order, id_index, n_rows - len(rows) + 1, line_nums)
    elif n_rows == 0:
        raise UserError("the CSV header is there but no data rows follow it")


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def column_order(names: list[str], id_column: str | None = None) -> tuple[list[int], int | None]:
    """Index in ``names`` of each feature, and of ``id_column``.

    UserError for a missing, extra or repeated column.
    """
    allowed = (*FEATURES, id_column) if id_column else FEATURES
    exactly = f"the columns must be exactly {EXPECTED} (any order)"
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"CSV header: column {name!r} appears more than once")
    for name in names:
        if name not in allowed:
            hint = "" if id_column else "; to pass an id column through, use --id-column NAME"
            raise UserError(f"CSV header: unexpected column {name!r}; {exactly}{hint}")
    for name in allowed:
        if name not in names:
            what = "id column" if name == id_column else "column"
            raise UserError(f"CSV header: {what} {name} is missing; {exactly}")
    return [names.index(f) for f in FEATURES], (names.index(id_column) if id_column else None)


def _length_problem(row, names, n_row, line) -> str:
    if len(row) < len(names):
        return (
            f"{_where(n_row, line)}, column {names[len(row)]}: value missing "
            f"({len(row)} values, the header has {len(names)} columns)"
        )
    return (
        f"{_where(n_row, line)}: {len(row)} values, the header has {len(names)} columns "
        f"(extra value {row[len(names)]!r} after column {names[-1]})"
    )


def _to_chunk(rows, names, order, id_index, first_row, line_nums) -> Chunk:
    """The rows as floats in FEATURES order; the first bad cell, in input order, is named."""
    ids = None
    try:
        if id_index is None:
            block = np.array(rows, dtype=np.float64)[:, order]
        else:
            block = np.array(rows, dtype=str)[:, order].astype(np.float64)
            ids = [row[id_index] for row in rows]
    except ValueError:
        block = None
    if block is not None and np.isfinite(block).all():
        return Chunk(block, ids)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if j == id_index:
                continue
            problem = _number_problem(cell)
            if problem:
                where = _where(first_row + i, line_nums[i])
                raise UserError(f"{where}, column {names[j]}: {cell!r} {problem}")
    raise AssertionError("numpy and float() disagree on this chunk")  # not reachable


def _number_problem(cell: str) -> str | None:
    try:
        value = float(cell)
    except ValueError:
        return "is not a number"
    return None if math.isfinite(value) else "is not a finite number"


def object_row(obj: object, where: str, id_column: str | None = None) -> tuple[list[float], str]:
    """The feature values of one JSON object in FEATURES order, and its id (or '')."""
    if not isinstance(obj, dict):
        raise UserError(
            f"{where}: expected a JSON object with keys {EXPECTED}, got {type(obj).__name__}"
        )
    for key in obj:
        if key not in FEATURES and key != id_column:
            hint = "" if id_column else "; to pass an id through, use --id-column NAME"
            raise UserError(
                f"{where}: unexpected key {key!r}; the keys must be exactly {EXPECTED}{hint}"
            )
    values = []
    for feature in FEATURES:
        if feature not in obj:
            raise UserError(f"{where}, column {feature}: key missing")
        values.append(json_number(obj[feature], f"{where}, column {feature}"))
    return values, (json_id(obj, id_column, where) if id_column else "")


def json_number(value: object, where: str) -> float:
    """A JSON value as a finite float; UserError naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}: {json.dumps(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"{where}: {value!r} is not a finite number")
    return number


def json_id(obj: dict, id_column: str, where: str) -> str:
    """The id of a JSON row as text: a string as it is, a number as JSON writes it."""
    if id_column not in obj:
        raise UserError(f"{where}: id key {id_column!r} missing")
    value = obj[id_column]
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return json.dumps(value)
    raise UserError(f"{where}, column {id_column}: the id must be a string or a number")


def _object_chunks(objects: Iterable[tuple[object, str]], chunk_rows: int, id_column: str | None):
    values, ids = [], []
    for obj, where in objects:
        row, row_id = object_row(obj, where, id_column)
        values.append(row)
        ids.append(row_id)
        if len(values) == chunk_rows:
            yield Chunk(np.array(values, dtype=np.float64), ids if id_column else None)
            values, ids = [], []
    if values:
        yield Chunk(np.array(values, dtype=np.float64), ids if id_column else None)


def jsonl_chunks(
    lines: Iterable[str], chunk_rows: int = CHUNK_ROWS, id_column: str | None = None
) -> Iterator[Chunk]:
    """Like ``csv_chunks`` for JSON lines: one object per line."""
    n_rows = 0

    def objects():
        nonlocal n_rows
        for line_num, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            n_rows += 1
            where = _where(n_rows, line_num)
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as err:
                raise UserError(
                    f"{where}: not valid JSON ({err.msg} at character {err.pos + 1})"
                ) from None

    yield from _object_chunks(objects(), chunk_rows, id_column)
    if n_rows == 0:
        raise _empty_input()


def json_array_chunks(
    text: str, chunk_rows: int = CHUNK_ROWS, id_column: str | None = None
) -> Iterator[Chunk]:
    """Like ``csv_chunks`` for one JSON array of objects (read whole)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"input is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    if not isinstance(doc, list):
        raise UserError(f"expected a JSON array of objects, got {type(doc).__name__}")
    if not doc:
        raise _empty_input()
    yield from _object_chunks(
        ((obj, _where(i)) for i, obj in enumerate(doc, start=1)), chunk_rows, id_column
    )


def read_chunks(
    stream: Iterable[str],
    fmt: str = "auto",
    chunk_rows: int = CHUNK_ROWS,
    id_column: str | None = None,
) -> Iterator[Chunk]:
    """Chunks of rows from a text stream of CSV, JSON lines or a JSON array."""
    try:
        lines = iter(stream)
        if fmt == "auto":
            fmt, lines = detect_format(lines)
        if fmt == "json":
            yield from json_array_chunks("".join(lines), chunk_rows, id_column)
        else:
            chunks = csv_chunks if fmt == "csv" else jsonl_chunks
            yield from chunks(lines, chunk_rows, id_column)
    except UnicodeDecodeError as err:
        raise UserError(f"input is not UTF-8 text ({err.reason}); save it as UTF-8") from None


# --- output --------------------------------------------------------------------------


def format_values(values) -> list[str]:
    """Shortest round-trip decimals: parsing them back gives the same float64 bits."""
    return [repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def sample_line(predict: Callable[[np.ndarray], np.ndarray], n: int) -> str:
    """'Sample predictions: [...]' for the first ``n`` rows of the saved test split."""
    path = in_project(SAMPLE, "--sample")
    X = read_table(path, FEATURES)
    if n > len(X):
        raise UserError(
            f"--sample {n}: {path} holds the first {len(X)} rows of the test split; "
            f"use N from 1 to {len(X)}"
        )
    return "Sample predictions: [" + ", ".join(format_values(predict(X[:n]))) + "]"


def predict_stream(
    predict: Callable[[np.ndarray], np.ndarray],
    stream: Iterable[str],
    out: TextIO,
    fmt: str = "auto",
    chunk_rows: int = CHUNK_ROWS,
    id_column: str | None = None,
) -> int:
    """Write one prediction per input row to ``out``; return the number of rows."""
    n = 0
    writer = csv.writer(out, lineterminator="\n") if id_column else None
    for chunk in read_chunks(stream, fmt, chunk_rows, id_column):
        y = checked_predict(predict, chunk.X, first_row=n + 1)
        if writer is None:
            out.write("\n".join(format_values(y)) + "\n")
        else:
            if n == 0:
                writer.writerow([id_column, "prediction"])
            writer.writerows(zip(chunk.ids, format_values(y), strict=True))
        n += len(chunk.X)
    return n


def checked_predict(predict, X: np.ndarray, first_row: int = 1) -> np.ndarray:
    """``predict(X)``, refusing finite features so large that a prediction is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        y = predict(X)
    overflow = ~np.isfinite(y)
    if overflow.any():
        row = first_row + int(np.argmax(overflow))
        raise UserError(
            f"row {row}: the prediction overflows float64; "
            "the feature values are far outside any real house"
        )
    return y


# --- the command ---------------------------------------------------------------------


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``, as the predict and serve commands both take it (see ``model_path``)."""
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="model file (quantised or float JSON); 'quant' or 'float' mean models/quant.json "
        "or models/float.json of the project (default: quant)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        nargs="?",
        default="-",
        metavar="INPUT",
        help="CSV, JSON-lines or JSON-array file; '-' or absent reads stdin",
    )
    add_model_argument(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format (default: auto, from the first non-blank character)",
    )
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="pass column (or key) NAME through; the output becomes CSV 'NAME,prediction'",
    )
    parser.add_argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help=f"print 'Sample predictions: [...]' for the first N rows of the test split "
        f"({SAMPLE}) instead of reading input",
    )
    parser.add_argument(
        "--sample-if-no-input",
        type=positive_int,
        metavar="N",
        help="like --sample N when no INPUT is given and nothing is piped on stdin "
        "(a terminal or /dev/null); the Docker image's default",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(args: argparse.Namespace) -> None:
    """Run the predict command with parsed ``args`` (see ``add_arguments``)."""
    if args.input != "-" and (args.sample or args.sample_if_no_input):
        raise UserError("give INPUT or a --sample option, not both (see --help)")
    if args.id_column is not None and (not args.id_column.strip() or args.id_column in FEATURES):
        raise UserError(
            f"--id-column {args.id_column!r}: name a column that is not one of the features"
        )
    n_sample = args.sample
    if args.sample_if_no_input and args.input == "-" and not stdin_is_piped():
        n_sample = args.sample_if_no_input
    try:
        if n_sample:
            line = sample_line(load_model(model_path(args.model)).predict, n_sample)
            sys.stdout.write(line + "\n")
        else:
            stream = open_input(args.input)
            predict = load_model(model_path(args.model)).predict
            with stream:
                predict_stream(predict, stream, sys.stdout, args.format, id_column=args.id_column)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (e.g. `| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

"""Predict median house values from rows of the 8 features.

    python -m stages.predict [INPUT] [--model quant|float] [--format auto|csv|jsonl]
    python -m stages.predict --sample N

INPUT is a file, or stdin when it is ``-`` or absent. It holds either CSV with a
header naming the 8 features as scikit-learn does (any column order), or JSON
lines, one object with those 8 keys per line; ``auto`` tells them apart by the
first non-blank character (``{`` means JSON lines). Each input row gives one
line on stdout: the prediction in $100k, as the shortest decimal that reads
back as the same float64 (Python's ``repr``).

Rows are parsed and predicted in chunks of ``CHUNK_ROWS``, so memory stays flat
however long the input is. A bad row stops the run with exit code 2 and one line
naming its row and column; predictions of earlier chunks may already be out.

Both paths import only numpy and the standard library. The Docker image runs the
default, quantised one and ships only ``models/quant.json``.
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

import numpy as np

from stages import quantizers
from stages.common import FEATURES, UserError, read_table, run

QUANT = "models/quant.json"
# The first SAMPLE_ROWS rows of the test split, features only; written by the
# split stage so that the Docker image can show predictions without the data set.
SAMPLE = "data/sample.csv"
CHUNK_ROWS = 8192
EXPECTED = ", ".join(FEATURES)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user mistake
        raise UserError(f"{message} (see --help)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="python -m stages.predict",
                     description="Predict median house values ($100k), one line per input row.")
    parser.add_argument("input", nargs="?", default="-", metavar="INPUT",
                        help="CSV or JSON-lines file; '-' or absent reads stdin")
    parser.add_argument("--model", choices=("quant", "float"), default="quant",
                        help="quant: models/quant.json (default); float: models/float.json")
    parser.add_argument("--format", choices=("auto", "csv", "jsonl"), default="auto",
                        help="input format (default: auto, from the first non-blank character)")
    parser.add_argument("--sample", type=_positive_int, metavar="N",
                        help=f"print 'Sample predictions: [...]' for the first N rows of the "
                             f"test split ({SAMPLE}) instead of reading input")
    parser.add_argument("--sample-if-no-input", type=_positive_int, metavar="N",
                        help="like --sample N when no INPUT is given and nothing is piped on "
                             "stdin (a terminal or /dev/null); the Docker image's default")
    args = parser.parse_args(argv)
    if args.input != "-" and (args.sample or args.sample_if_no_input):
        parser.error("give INPUT or a --sample option, not both")
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


# --- models -----------------------------------------------------------------

def load_predictor(kind: str):
    """The prediction function of the ``--model``: rows of FEATURES in, float64 values out.

    Both models load from plain JSON with numpy alone: never a pickle, and the
    float model predicts exactly as the evaluate stage scores it.
    """
    if kind == "quant":
        return quantizers.load(QUANT).predict
    try:
        from stages import train
    except ImportError:  # the Docker image ships the quantised model's code only
        raise UserError("--model float is not in this image, which serves the quantised "
                        "model; use --model quant") from None

    coef, intercept = train.load_weights(train.WEIGHTS)
    return lambda X: quantizers.linear_predict(X, coef, intercept)


# --- input ------------------------------------------------------------------

def stdin_is_piped() -> bool:
    """True if stdin is a pipe, file or socket; False for a terminal, /dev/null or none."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, ValueError, OSError):
        return False
    return not stat.S_ISCHR(mode)


def open_input(path: str):
    """A text stream of the input; UTF-8, a leading byte-order mark ignored."""
    if path == "-":
        if sys.stdin is None:
            raise UserError("no input: stdin is closed; give a file or pipe rows on stdin")
        if sys.stdin.isatty():
            raise UserError("no input: give a CSV or JSON-lines file, pipe rows on stdin, "
                            "or use --sample N")
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None


def detect_format(lines):
    """('csv' or 'jsonl', the same lines) from the first non-blank character."""
    lines = iter(lines)
    skipped = []
    for line in lines:
        skipped.append(line)
        if line.strip():
            fmt = "jsonl" if line.lstrip().startswith("{") else "csv"
            return fmt, itertools.chain(skipped, lines)
    return "csv", iter(skipped)


def _where(row: int, line: int) -> str:
    return f"row {row} (line {line})"


def _empty_input() -> UserError:
    return UserError(f"input is empty: expected CSV with a header naming {EXPECTED}, "
                     "or JSON lines with those keys")


def csv_chunks(lines, chunk_rows: int = CHUNK_ROWS):
    """Float64 arrays of up to ``chunk_rows`` rows, columns in FEATURES order.

    ``lines`` is any iterable of text lines. The header must name each feature
    once, in any order; blank lines (or only whitespace) are skipped. A bad header, a row of the
    wrong length, or a value that is not a finite number raises UserError
    naming the row and the column.
    """
    reader = csv.reader(lines)
    try:
        header = next((r for r in reader if not _blank(r)), None)
        if header is None:
            raise _empty_input()
        names = [name.strip() for name in header]
        order = _column_order(names)
        rows, line_nums, n_rows = [], [], 0
        for row in reader:
            if _blank(row):
                continue
            n_rows += 1
            if len(row) != len(names):
                if rows:  # a bad value in an earlier row of this chunk is named first
                    _to_floats(rows, names, order, n_rows - len(rows), line_nums)
                raise UserError(_length_problem(row, names, n_rows, reader.line_num))
            rows.append(row)
            line_nums.append(reader.line_num)
            if len(rows) == chunk_rows:
                yield _to_floats(rows, names, order, n_rows - len(rows) + 1, line_nums)
                rows, line_nums = [], []
    except csv.Error as err:
        raise UserError(f"line {reader.line_num}: malformed CSV ({err})") from None
    if rows:
        yield _to_floats(rows, names, order, n_rows - len(rows) + 1, line_nums)
    elif n_rows == 0:
        raise UserError("the CSV header is there but no data rows follow it")


def _blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _column_order(names: list[str]) -> list[int]:
    """Index in ``names`` of each feature; UserError for a missing, extra or repeated column."""
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"CSV header: column {name!r} appears more than once")
    for name in names:
        if name not in FEATURES:
            raise UserError(f"CSV header: unexpected column {name!r}; "
                            f"the columns must be exactly {EXPECTED} (any order)")
    for feature in FEATURES:
        if feature not in names:
            raise UserError(f"CSV header: column {feature} is missing; "
                            f"the columns must be exactly {EXPECTED} (any order)")
    return [names.index(feature) for feature in FEATURES]


def _length_problem(row, names, n_row, line) -> str:
    if len(row) < len(names):
        return (f"{_where(n_row, line)}, column {names[len(row)]}: value missing "
                f"({len(row)} values, the header has {len(names)} columns)")
    return (f"{_where(n_row, line)}: {len(row)} values, the header has {len(names)} columns "
            f"(extra value {row[len(names)]!r} after column {names[-1]})")


def _to_floats(rows, names, order, first_row, line_nums) -> np.ndarray:
    """The chunk as floats in FEATURES order; the first bad cell, in input order, is named."""
    try:
        block = np.array(rows, dtype=np.float64)
    except ValueError:
        block = None
    if block is not None:
        bad = ~np.isfinite(block)
        if not bad.any():
            return block[:, order]
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            try:
                value = float(cell)
            except ValueError:
                problem = "is not a number"
            else:
                if math.isfinite(value):
                    continue
                problem = "is not a finite number"
            raise UserError(f"{_where(first_row + i, line_nums[i])}, column {names[j]}: "
                            f"{cell!r} {problem}")
    raise AssertionError("numpy and float() disagree on this chunk")  # not reachable


def jsonl_chunks(lines, chunk_rows: int = CHUNK_ROWS):
    """Like ``csv_chunks`` for JSON lines: one object per line with exactly the 8 keys."""
    chunk, n_rows = [], 0
    for line_num, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        n_rows += 1
        chunk.append(_json_row(line, _where(n_rows, line_num)))
        if len(chunk) == chunk_rows:
            yield np.array(chunk, dtype=np.float64)
            chunk = []
    if chunk:
        yield np.array(chunk, dtype=np.float64)
    elif n_rows == 0:
        raise _empty_input()


def _json_row(line: str, where: str) -> list[float]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at character {err.pos + 1})"
                        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with keys {EXPECTED}, "
                        f"got {type(obj).__name__}")
    for key in obj:
        if key not in FEATURES:
            raise UserError(f"{where}: unexpected key {key!r}; the keys must be exactly "
                            f"{EXPECTED}")
    values = []
    for feature in FEATURES:
        if feature not in obj:
            raise UserError(f"{where}, column {feature}: key missing")
        value = obj[feature]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}, column {feature}: {json.dumps(value)} is not a number")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise UserError(f"{where}, column {feature}: {obj[feature]!r} is not a finite "
                            "number")
        values.append(value)
    return values


def read_chunks(stream, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS):
    """Feature arrays from a text stream of CSV or JSON lines (see module docstring)."""
    try:
        lines = iter(stream)
        if fmt == "auto":
            fmt, lines = detect_format(lines)
        chunks = csv_chunks if fmt == "csv" else jsonl_chunks
        yield from chunks(lines, chunk_rows)
    except UnicodeDecodeError as err:
        raise UserError(f"input is not UTF-8 text ({err.reason}); save it as UTF-8") from None


# --- output -----------------------------------------------------------------

def format_values(values) -> list[str]:
    """Shortest round-trip decimals: parsing them back gives the same float64 bits."""
    return [repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def sample_line(predict, n: int) -> str:
    """'Sample predictions: [...]' for the first ``n`` rows of the saved test split."""
    X = read_table(SAMPLE, FEATURES)
    if n > len(X):
        raise UserError(f"--sample {n}: {SAMPLE} holds the first {len(X)} rows of the test "
                        f"split; use N from 1 to {len(X)}")
    return "Sample predictions: [" + ", ".join(format_values(predict(X[:n]))) + "]"


def predict_stream(predict, stream, out, fmt: str = "auto", chunk_rows: int = CHUNK_ROWS) -> int:
    """Write one prediction per input row to ``out``; return the number of rows."""
    n = 0
    for X in read_chunks(stream, fmt, chunk_rows):
        with np.errstate(over="ignore", invalid="ignore"):
            y = predict(X)
        overflow = ~np.isfinite(y)
        if overflow.any():  # finite features so large that the prediction is not
            raise UserError(f"row {n + int(np.argmax(overflow)) + 1}: the prediction overflows "
                            "float64; the feature values are far outside any real house")
        out.write("\n".join(format_values(y)) + "\n")
        n += len(X)
    return n


def main(argv=None) -> None:
    args = parse_args(argv)
    n_sample = args.sample
    if args.sample_if_no_input and args.input == "-" and not stdin_is_piped():
        n_sample = args.sample_if_no_input
    try:
        if n_sample:
            line = sample_line(load_predictor(args.model), n_sample)
            sys.stdout.write(line + "\n")
        else:
            stream = open_input(args.input)
            predict = load_predictor(args.model)
            with stream:
                predict_stream(predict, stream, sys.stdout, args.format)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (e.g. `| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    run(main)

"""The predict command: house values for rows of the model's features.

    cali-reg predict [INPUT] [--model PATH|quant|float] [--format auto|csv|jsonl|json]
                     [--id-column NAME] [--strict-columns] [--strict-range]
    cali-reg predict --sample N

INPUT is a file, or stdin when it is ``-`` or absent: CSV with a header naming the
model's features (any column order), JSON lines (one object per line), or one JSON
document (an array of objects, one object, or an MLflow envelope), whatever its
layout; ``cali_reg.rows`` reads them all, columns by name into the model's order.
Each input row gives one line on stdout: the prediction in $100k, as the shortest
decimal that reads back as the same float64. With ``--id-column NAME`` each row
also carries NAME, and the output is CSV ``NAME,prediction``.

CSV and JSON lines are parsed and predicted in chunks of ``CHUNK_ROWS`` rows, so
memory stays flat however long the input is. A bad row stops the run with exit code
2 and one line naming its row and column; predictions of earlier chunks may already
be out. Imports numpy and the standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import stat
import sys
from collections.abc import Iterable
from typing import TextIO

import numpy as np

from cali_reg.errors import UserError
from cali_reg.model import load_model
from cali_reg.options import (
    add_model_argument,
    add_strict_arguments,
    check_id_column,
    in_project,
    model_path,
    positive_int,
)
from cali_reg.rows import CHUNK_ROWS, FORMATS, Schema, check_range, checked_predict, read_chunks

# The first rows of the test split, features only; written by the split stage so
# that the Docker image can show predictions without the data set.
SAMPLE = "data/sample.csv"


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


# --- output --------------------------------------------------------------------------


def format_values(values) -> list[str]:
    """Shortest round-trip decimals: parsing them back gives the same float64 bits."""
    return [repr(v) for v in np.asarray(values, dtype=np.float64).tolist()]


def sample_line(model, n: int) -> str:
    """'Sample predictions: [...]' for the first ``n`` rows of the saved test split."""
    path = in_project(SAMPLE, "--sample")
    schema = Schema(tuple(model.feature_names))
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            X = np.concatenate([c.X for c in read_chunks(fh, schema, "csv")])
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    if n > len(X):
        raise UserError(
            f"--sample {n}: {path} holds the first {len(X)} rows of the test split; "
            f"use N from 1 to {len(X)}"
        )
    return "Sample predictions: [" + ", ".join(format_values(model.predict(X[:n]))) + "]"


def predict_stream(
    model,
    stream: Iterable[str],
    out: TextIO,
    fmt: str = "auto",
    chunk_rows: int = CHUNK_ROWS,
    id_column: str | None = None,
    strict_columns: bool = False,
    strict_range: bool = False,
) -> int:
    """Write one prediction per input row to ``out``; return the number of rows.

    The columns are matched to ``model.feature_names`` by name; ``strict_columns``
    refuses other columns, ``strict_range`` a value outside the training range.
    """
    schema = Schema(tuple(model.feature_names), id_column, True, strict_columns)
    n = 0
    writer = csv.writer(out, lineterminator="\n") if id_column else None
    for chunk in read_chunks(stream, schema, fmt, chunk_rows):
        if strict_range:
            check_range(chunk.X, schema.features, model.training_range, first_row=n + 1)
        y = checked_predict(model.predict, chunk.X, first_row=n + 1)
        if writer is None:
            out.write("\n".join(format_values(y)) + "\n")
        else:
            if n == 0:
                writer.writerow([id_column, "prediction"])
            writer.writerows(zip(chunk.ids, format_values(y), strict=True))
        n += len(chunk.X)
    return n


def require_training_range(model, path) -> None:
    """UserError for ``--strict-range`` with a model file that records no training range."""
    if model.training_range is None:
        raise UserError(
            f"--strict-range: {path} records no training range (it was made before "
            "cali-reg recorded one); re-run 'dvc repro' to rebuild it"
        )


# --- the command ---------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        nargs="?",
        default="-",
        metavar="INPUT",
        help="CSV, JSON-lines or JSON file; '-' or absent reads stdin",
    )
    add_model_argument(parser)
    add_strict_arguments(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="input format: csv, jsonl (JSON lines) or json (one document: an array, an object "
        "or an MLflow envelope); default: auto, from the first non-blank line",
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


def main(args: argparse.Namespace) -> None:
    """Run the predict command with parsed ``args`` (see ``add_arguments``)."""
    if args.input != "-" and (args.sample or args.sample_if_no_input):
        raise UserError("give INPUT or a --sample option, not both (see --help)")
    n_sample = args.sample
    if args.sample_if_no_input and args.input == "-" and not stdin_is_piped():
        n_sample = args.sample_if_no_input
    try:
        if n_sample:
            model = load_model(model_path(args.model))
            sys.stdout.write(sample_line(model, n_sample) + "\n")
        else:
            stream = open_input(args.input)
            path = model_path(args.model)
            model = load_model(path)
            check_id_column(args.id_column, model.feature_names)
            if args.strict_range:
                require_training_range(model, path)
            with stream:
                predict_stream(
                    model,
                    stream,
                    sys.stdout,
                    args.format,
                    id_column=args.id_column,
                    strict_columns=args.strict_columns,
                    strict_range=args.strict_range,
                )
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (e.g. `| head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

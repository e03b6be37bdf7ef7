"""Plumbing shared by the stages: params, validation, atomic file writes, CSV I/O.

Nothing here imports scikit-learn or yaml at module level, so the numpy-only
predictor can use it without paying for those imports.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PARAMS_FILE = Path("params.yaml")

FEATURES = (
    "MedInc", "HouseAge", "AveRooms", "AveBedrms",
    "Population", "AveOccup", "Latitude", "Longitude",
)
TARGET = "MedHouseVal"
COLUMNS = FEATURES + (TARGET,)
N_ROWS = 20640  # the published size of the data set (Pace & Barry, 1997)


class UserError(Exception):
    """A mistake the user can fix; reported as one line, never as a traceback."""


def run(main) -> None:
    """Call ``main()``; report a UserError as one line on stderr and exit 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# --- params -----------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


class Rule:
    """One param: a type/range check and the words that describe what it allows."""

    def __init__(self, check, allowed: str):
        self.check = check
        self.allowed = allowed


def int_in(lo: int, hi: int) -> Rule:
    return Rule(lambda v: _is_int(v) and lo <= v <= hi, f"an integer from {lo} to {hi}")


def number_open(lo: float, hi: float) -> Rule:
    return Rule(lambda v: _is_number(v) and lo < v < hi,
                f"a number strictly between {lo:g} and {hi:g}")


def number_above(lo: float) -> Rule:
    return Rule(lambda v: _is_number(v) and v > lo, f"a number greater than {lo:g}")


def one_of(*choices) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in choices,
                "one of " + ", ".join(choices))


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def validate_section(params: dict, section: str, rules: dict[str, Rule]) -> dict:
    """Return ``params[section]`` after checking every key against ``rules``.

    Raises UserError naming the first bad key and what it allows: a missing key,
    an unknown key (usually a typo), or a value of the wrong type or range.
    """
    where = f"{PARAMS_FILE}"
    values = params.get(section) if isinstance(params, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"{where}: section '{section}' is missing; it needs keys "
                        + ", ".join(rules))
    for key, rule in rules.items():
        if key not in values:
            raise UserError(f"{where}: {section}.{key} is missing; set it to {rule.allowed}")
        if not rule.check(values[key]):
            raise UserError(f"{where}: {section}.{key} = {values[key]!r} is not allowed; "
                            f"use {rule.allowed}")
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise UserError(f"{where}: unknown key {section}.{unknown[0]}; "
                        f"allowed keys are " + ", ".join(rules))
    return dict(values)


def load_params(section: str, rules: dict[str, Rule], path: Path = PARAMS_FILE) -> dict:
    """Read ``path`` and return one validated section of it."""
    import yaml  # only the stages need it, not the predictor

    try:
        params = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"{path} is not valid YAML{at}: fix its syntax") from None
    return validate_section(params, section, rules)


def split_rows(test_size: float, n_rows: int | None = None) -> dict[str, int]:
    """Rows in the data set (``N_ROWS`` unless given) and in each part of its split.

    scikit-learn's ``train_test_split`` rounds the test part up; the stages that
    read a data file check its row count against these numbers.
    """
    n_rows = N_ROWS if n_rows is None else n_rows
    n_test = math.ceil(test_size * n_rows)
    return {"all": n_rows, "train": n_rows - n_test, "test": n_test}


# --- files ------------------------------------------------------------------

@contextmanager
def atomic_open(path: Path | str):
    """A binary file handle whose content replaces ``path`` only once it is complete.

    Readers see the old file or the new one, never half. A stage killed mid-write
    leaves only a stray temp file, which DVC ignores, and the previous good
    output stays in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def format_csv(header, table, chunk_rows: int = 20_000):
    """CSV text in pieces, floats as shortest round-trip decimals so a reload gives the same bits.

    ``table`` is an array (every value written as a float) or a list of rows, in
    which Python ints are written as integers. Pieces of ``chunk_rows`` rows keep
    memory flat: the whole text of a large table is several times its size.
    """
    yield ",".join(header) + "\n"
    if isinstance(table, np.ndarray):
        table, cell = np.asarray(table, dtype=np.float64), repr
    else:
        cell = _cell
    for start in range(0, len(table), chunk_rows):
        rows = table[start:start + chunk_rows]
        rows = rows.tolist() if isinstance(rows, np.ndarray) else rows
        yield "".join(",".join(map(cell, row)) + "\n" for row in rows)


def _cell(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


def write_table(path: Path | str, header, table) -> None:
    with atomic_open(path) as fh:
        for piece in format_csv(header, table):
            fh.write(piece.encode("utf-8"))


def read_table(path: Path | str, header=COLUMNS, rows: int | None = None) -> np.ndarray:
    """Load a numeric CSV written by ``write_table`` and check it is whole and finite.

    With ``rows``, also check the row count: a file with rows added or lost is refused.
    """
    path = Path(path)
    try:
        with path.open() as fh:
            first = fh.readline().rstrip("\r\n")
            if first.split(",") != list(header):
                raise UserError(f"{path}: header is {first!r}, expected {','.join(header)!r}; "
                                "re-run 'dvc repro' to rebuild it")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": checked below
                table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except ValueError as err:
        raise UserError(f"{path}: {err}; re-run 'dvc repro' to rebuild it") from None
    if table.shape[0] == 0:
        raise UserError(f"{path} has no rows; re-run 'dvc repro' to rebuild it")
    if rows is not None and table.shape[0] != rows:
        raise UserError(f"{path} has {table.shape[0]} rows, expected {rows}; "
                        "re-run 'dvc repro' to rebuild it")
    if table.shape[1] != len(header):
        raise UserError(f"{path} has {table.shape[1]} columns, expected {len(header)}; "
                        "re-run 'dvc repro' to rebuild it")
    bad = ~np.isfinite(table)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"{path}: row {row + 1} column {header[col]} is not a finite number; "
                        "re-run 'dvc repro' to rebuild it")
    return table


def read_xy(path: Path | str, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and target from a data CSV with the ``COLUMNS`` header."""
    table = read_table(path, COLUMNS, rows)
    return table[:, :-1], table[:, -1]

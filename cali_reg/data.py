"""The data: its schema, loading California Housing, the split, and the CSV tables.

numpy only at import: scikit-learn is imported inside the two functions that
need it, so the predictor can use the schema and the readers without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cali_reg.errors import UserError
from cali_reg.files import atomic_open

FEATURES = (
    "MedInc",
    "HouseAge",
    "AveRooms",
    "AveBedrms",
    "Population",
    "AveOccup",
    "Latitude",
    "Longitude",
)
TARGET = "MedHouseVal"
COLUMNS = (*FEATURES, TARGET)


def fetch_housing() -> tuple[np.ndarray, np.ndarray]:
    """Features and target (in $100k) of California Housing, as scikit-learn ships them.

    Offline, scikit-learn reads its cache from $SCIKIT_LEARN_DATA; with no cache
    and no network this raises a UserError saying so.
    """
    from sklearn.datasets import fetch_california_housing

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its "retry downloading" warnings
            bunch = fetch_california_housing()
    except OSError as err:  # no cache and no network (URLError is an OSError)
        raise UserError(
            f"cannot load California Housing ({err.__class__.__name__}): with no network, "
            "set SCIKIT_LEARN_DATA to a folder holding cal_housing_py3.pkz "
            "(e.g. ../shared/data/scikit_learn_data, as an absolute path)"
        ) from None
    except Exception as err:  # a corrupt cache file fails inside joblib/zlib
        raise UserError(
            f"the scikit-learn cache of California Housing is unreadable ({err}); "
            "delete cal_housing_py3.pkz from SCIKIT_LEARN_DATA and re-run"
        ) from None
    if tuple(bunch.feature_names) != FEATURES or bunch.data.ndim != 2 or not len(bunch.data):
        raise UserError(
            f"unexpected data set: {bunch.data.shape} with columns {bunch.feature_names}; "
            f"expected rows of {', '.join(FEATURES)}"
        )
    return bunch.data, bunch.target


def split_table(table: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and for testing, as scikit-learn's ``train_test_split`` picks them."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(table, test_size=test_size, random_state=seed)
    return train, test


def format_csv(header: Sequence[str], table, chunk_rows: int = 20_000) -> Iterator[str]:
    """CSV text in pieces, floats as shortest round-trip decimals so a reload gives the same bits.

    ``table`` is an array (every value written as a float) or a list of rows, in
    which Python ints are written as integers and strings as they are. Pieces of
    ``chunk_rows`` rows keep memory flat: the whole text of a large table is
    several times its size.
    """
    yield ",".join(header) + "\n"
    if isinstance(table, np.ndarray):
        table, cell = np.asarray(table, dtype=np.float64), repr
    else:
        cell = _cell
    for start in range(0, len(table), chunk_rows):
        rows = table[start : start + chunk_rows]
        rows = rows.tolist() if isinstance(rows, np.ndarray) else rows
        yield "".join(",".join(map(cell, row)) + "\n" for row in rows)


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


def write_table(path: Path | str, header: Sequence[str], table) -> None:
    """Write ``table`` as CSV to ``path`` atomically (see ``format_csv``)."""
    with atomic_open(path) as fh:
        for piece in format_csv(header, table):
            fh.write(piece.encode("utf-8"))


def read_table(path: Path | str, header: Sequence[str] = COLUMNS) -> np.ndarray:
    """Load a numeric CSV written by ``write_table``: the header must be ``header``.

    A file with another header, a value that is not a finite number, a ragged
    row or no rows is refused with one UserError line.
    """
    path = Path(path)
    fix = "re-run 'dvc repro' to rebuild it"
    try:
        with path.open() as fh:
            first = fh.readline().rstrip("\r\n")
            if first.split(",") != list(header):
                raise UserError(
                    f"{path}: header is {first!r}, expected {','.join(header)!r}; {fix}"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": checked below
                table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {err}; {fix}") from None
    if table.shape[0] == 0:
        raise UserError(f"{path} has no rows; {fix}")
    if table.shape[1] != len(header):
        raise UserError(f"{path} has {table.shape[1]} columns, expected {len(header)}; {fix}")
    bad = ~np.isfinite(table)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(f"{path}: row {row + 1} column {header[col]} is not a finite number; {fix}")
    return table


def read_xy(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Features and target from a data CSV with the ``COLUMNS`` header."""
    table = read_table(path, COLUMNS)
    return table[:, :-1], table[:, -1]


def read_named(
    path: Path | str, names: Sequence[str], model: str = "the model", target: str = TARGET
) -> tuple[np.ndarray, np.ndarray]:
    """Features in the order of ``names`` (a model's feature_names) and the target.

    The columns are found by name in the CSV header, so a model file that lists its
    features (and coefficients) in another order is scored on the right columns. A
    name the data does not have is one UserError line naming ``model``.
    """
    path = Path(path)
    try:
        with path.open() as fh:
            header = fh.readline().rstrip("\r\n").split(",")
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read it ({err}); re-run 'dvc repro'") from None
    for name in header:
        if header.count(name) > 1:
            raise UserError(f"{path}: column {name!r} appears more than once in its header")
    for name in (*names, target):
        if name not in header:
            raise UserError(
                f"{model} names feature {name!r}, which {path} does not have (its columns: "
                f"{', '.join(header)}); the model was not made from this data"
            )
    table = read_table(path, header)
    return table[:, [header.index(n) for n in names]], table[:, header.index(target)]

"""Stage data: fetch California Housing with scikit-learn and write it as a plain CSV.

Offline, scikit-learn reads its cache from $SCIKIT_LEARN_DATA; with no cache and
no network the stage stops with one line saying so.
"""
import warnings

import numpy as np

from stages.common import COLUMNS, FEATURES, N_ROWS, UserError, run, write_table

OUT = "data/housing.csv"


def fetch() -> tuple[np.ndarray, np.ndarray]:
    """Features and target (in $100k) as scikit-learn ships them."""
    from sklearn.datasets import fetch_california_housing

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its "retry downloading" warnings
            bunch = fetch_california_housing()
    except OSError as err:  # no cache and no network (URLError is an OSError)
        raise UserError(
            f"cannot load California Housing ({err.__class__.__name__}): with no network, "
            "set SCIKIT_LEARN_DATA to a folder holding cal_housing_py3.pkz "
            "(e.g. ../shared/data/scikit_learn_data, as an absolute path)") from None
    except Exception as err:  # a corrupt cache file fails inside joblib/zlib
        raise UserError(f"the scikit-learn cache of California Housing is unreadable ({err}); "
                        "delete cal_housing_py3.pkz from SCIKIT_LEARN_DATA and re-run") from None
    if tuple(bunch.feature_names) != FEATURES or bunch.data.shape != (N_ROWS, len(FEATURES)):
        raise UserError(f"unexpected data set: {bunch.data.shape} with columns "
                        f"{bunch.feature_names}; expected {N_ROWS} rows of {FEATURES}")
    return bunch.data, bunch.target


def main() -> None:
    X, y = fetch()
    write_table(OUT, COLUMNS, np.column_stack([X, y]))


if __name__ == "__main__":
    run(main)

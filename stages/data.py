"""Stage data: California Housing from scikit-learn, written as a plain CSV."""

import numpy as np

from cali_reg.data import COLUMNS, fetch_housing, write_table
from cali_reg.errors import run

OUT = "data/housing.csv"


def main() -> None:
    X, y = fetch_housing()
    write_table(OUT, COLUMNS, np.column_stack([X, y]))


if __name__ == "__main__":
    run(main)

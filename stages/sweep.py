"""Stage sweep: every quantisation scheme at bits 2 to 16, scored on the test split.

One CSV per variant under plots/sweep/ (bits, payload_bytes, r2, rmse, mae), one
line each in the DVC plots.
"""

from pathlib import Path

from cali_reg.data import read_xy, write_table
from cali_reg.errors import run
from cali_reg.model import FloatModel, load_model
from cali_reg.sweep import COLUMNS, sweep

TRAIN, TEST = "data/train.csv", "data/test.csv"
FLOAT = "models/float.json"
OUT = Path("plots/sweep")


def main() -> None:
    fmodel = load_model(FLOAT, expect=FloatModel)
    tables = sweep(fmodel.coef, fmodel.intercept, read_xy(TRAIN), read_xy(TEST))
    for name, rows in tables.items():
        write_table(OUT / f"{name}.csv", COLUMNS, rows)
    # a variant dropped from the grid must not leave its old line behind
    for stale in set(OUT.glob("*.csv")) - {OUT / f"{name}.csv" for name in tables}:
        stale.unlink()


if __name__ == "__main__":
    run(main)

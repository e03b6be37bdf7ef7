"""Stage sweep: every quantised format at every width it offers, scored on the test split.

One long table, plots/sweep.csv: a row per variant and bit width, with its payload,
test scores, R² loss against the float model, and whether it is on the Pareto front.
"""

from cali_reg.data import read_xy, write_table
from cali_reg.errors import run
from cali_reg.model import FloatModel, load_model
from cali_reg.sweep import COLUMNS, sweep

TRAIN, TEST = "data/train.csv", "data/test.csv"
FLOAT = "models/float.json"
OUT = "plots/sweep.csv"


def main() -> None:
    fmodel = load_model(FLOAT, expect=FloatModel)
    write_table(OUT, COLUMNS, sweep(fmodel.coef, fmodel.intercept, read_xy(TRAIN), read_xy(TEST)))


if __name__ == "__main__":
    run(main)

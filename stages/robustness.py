"""Stage robustness: every quantisation variant at bits 2 to 16, re-fitted on many splits.

Writes plots/robustness.csv: per variant and bit width, the mean and the worst
change in R² (quantised minus float) over the splits, on the test and the
training rows.
"""

from cali_reg.data import read_table, write_table
from cali_reg.errors import run
from cali_reg.params import int_in, load_params, number_open
from cali_reg.robustness import COLUMNS, robustness

IN = "data/housing.csv"
OUT = "plots/robustness.csv"
RULES = {"splits": int_in(1, 1000), "test_size": number_open(0, 1)}


def main() -> None:
    params = load_params("robustness", RULES)
    write_table(OUT, COLUMNS, robustness(read_table(IN), params["splits"], params["test_size"]))


if __name__ == "__main__":
    run(main)

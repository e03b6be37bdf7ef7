"""Stage robustness: the sweep's featured variants, re-fitted and quantised on many splits.

Writes plots/robustness.csv: per variant and bit width, the mean and the worst
change in R² (quantised minus float) over the splits, on the test and the
training rows; and the same for the model that selection by margin picks.
"""

from threadpoolctl import threadpool_limits

from cali_reg.data import read_table, write_table
from cali_reg.errors import run
from cali_reg.params import SPLIT_RULES, int_in, load_param, load_params, number_at_least
from cali_reg.robustness import COLUMNS, robustness

IN = "data/housing.csv"
OUT = "plots/robustness.csv"
RULES = {"splits": int_in(1, 1000), "margin": number_at_least(0)}


def main() -> None:
    params = load_params("robustness", RULES)
    test_size = load_param("split", "test_size", SPLIT_RULES)
    table = read_table(IN)
    # Thousands of fits and products of 8 columns: BLAS threads gain nothing on them,
    # and between calls they spin, taking twice the CPU time of the work.
    with threadpool_limits(limits=1, user_api="blas"):
        rows = robustness(table, params["splits"], test_size, (params["margin"],))
    write_table(OUT, COLUMNS, rows)


if __name__ == "__main__":
    run(main)

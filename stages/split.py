"""Stage split: a seeded train/test split of data/housing.csv."""

from cali_reg.data import COLUMNS, FEATURES, read_table, split_table, write_table
from cali_reg.errors import run
from cali_reg.params import SPLIT_RULES, load_params

IN = "data/housing.csv"
OUTS = {"train": "data/train.csv", "test": "data/test.csv", "sample": "data/sample.csv"}
# The sample (features of the first rows of the test split) is what the Docker
# image ships for its default output, instead of the data set.
SAMPLE_ROWS = 100
RULES = SPLIT_RULES


def main() -> None:
    params = load_params("split", RULES)
    train, test = split_table(read_table(IN), params["test_size"], params["seed"])
    write_table(OUTS["train"], COLUMNS, train)
    write_table(OUTS["test"], COLUMNS, test)
    write_table(OUTS["sample"], FEATURES, test[:SAMPLE_ROWS, : len(FEATURES)])


if __name__ == "__main__":
    run(main)

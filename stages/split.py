"""Stage split: a seeded train/test split of data/housing.csv."""
import numpy as np

from stages.common import (COLUMNS, FEATURES, int_in, load_params, number_open, read_table, run,
                           split_rows, write_table)

IN = "data/housing.csv"
OUTS = {"train": "data/train.csv", "test": "data/test.csv", "sample": "data/sample.csv"}
# The sample (features of the first rows of the test split) is what the Docker
# image ships for its default output, instead of the data set.
SAMPLE_ROWS = 100
RULES = {"test_size": number_open(0, 1), "seed": int_in(0, 2**32 - 1)}


def split(table: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows for training and for testing, as scikit-learn's ``train_test_split`` picks them."""
    from sklearn.model_selection import train_test_split

    return train_test_split(table, test_size=test_size, random_state=seed)


def main() -> None:
    params = load_params("split", RULES)
    table = read_table(IN, rows=split_rows(params["test_size"])["all"])
    train, test = split(table, params["test_size"], params["seed"])
    write_table(OUTS["train"], COLUMNS, train)
    write_table(OUTS["test"], COLUMNS, test)
    write_table(OUTS["sample"], FEATURES, test[:SAMPLE_ROWS, :len(FEATURES)])


if __name__ == "__main__":
    run(main)

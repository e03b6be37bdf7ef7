"""Stage train: fit a LinearRegression on the training split and save it.

Two files hold the same model: the scikit-learn estimator (joblib) and its
weights as plain JSON, which the later stages and the predictor read with numpy
alone. The JSON also records each feature's range in the training rows.
"""

from cali_reg.data import read_xy
from cali_reg.errors import run
from cali_reg.model import training_range_of
from cali_reg.train import fit, save

IN = "data/train.csv"
OUT = "models/float.joblib"
WEIGHTS = "models/float.json"


def main() -> None:
    X, y = read_xy(IN)
    save(fit(X, y), OUT, WEIGHTS, training_range_of(X))


if __name__ == "__main__":
    run(main)

"""Stage train: fit a LinearRegression on the training split and save it.

Two files hold the same model: the scikit-learn estimator (joblib) and its
weights as plain JSON, which the later stages and the predictor read with numpy
alone.
"""

from cali_reg.data import read_xy
from cali_reg.errors import run
from cali_reg.train import fit, save

IN = "data/train.csv"
OUT = "models/float.joblib"
WEIGHTS = "models/float.json"


def main() -> None:
    save(fit(*read_xy(IN)), OUT, WEIGHTS)


if __name__ == "__main__":
    run(main)

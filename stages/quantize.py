"""Stage quantize: the float model's parameters as a few-bit integer model, saved as JSON.

The sound schemes re-fit the intercept and round error-aware on the training
split (calibration data); the seed's ``window`` scheme ignores both.
"""

from cali_reg.data import read_xy
from cali_reg.errors import run
from cali_reg.files import atomic_write_text
from cali_reg.model import FloatModel, dumps, load_model
from cali_reg.params import boolean, int_in, load_params, number_above, one_of
from cali_reg.quantize import ROUNDINGS, SCHEMES, quantize

TRAIN = "data/train.csv"
FLOAT = "models/float.json"
OUT = "models/quant.json"
RULES = {
    "scheme": one_of(*SCHEMES),
    "bits": int_in(2, 16),
    "margin": number_above(0),
    "refit_intercept": boolean(),
    "rounding": one_of(*ROUNDINGS),
}


def main() -> None:
    params = load_params("quantize", RULES)
    calibration = read_xy(TRAIN)
    fmodel = load_model(FLOAT, expect=FloatModel)
    qmodel = quantize(
        fmodel.coef,
        fmodel.intercept,
        feature_names=fmodel.feature_names,
        calibration=calibration,
        **params,
    )
    atomic_write_text(OUT, dumps(qmodel))


if __name__ == "__main__":
    run(main)

"""Stage quantize: the float model's parameters as a few-bit integer model, saved as JSON.

The sound schemes re-fit the intercept and choose their codes on the training
split (calibration data); the seed's ``window`` scheme ignores both. Under pow2,
``quantize.margin`` is the training R² loss accepted and picks the bit width.
"""

from cali_reg.data import read_xy
from cali_reg.errors import UserError, run
from cali_reg.files import atomic_write_text
from cali_reg.model import FloatModel, dumps, load_model
from cali_reg.params import boolean, int_in, load_params, number_at_least, one_of
from cali_reg.quantize import ROUNDINGS, SCHEMES, quantize_within

TRAIN = "data/train.csv"
FLOAT = "models/float.json"
OUT = "models/quant.json"
RULES = {
    "scheme": one_of(*SCHEMES),
    "bits": int_in(2, 16),
    "margin": number_at_least(0),
    "refit_intercept": boolean(),
    "rounding": one_of(*ROUNDINGS),
}


def main() -> None:
    params = load_params("quantize", RULES)
    if SCHEMES[params["scheme"]].uses_margin and params["margin"] == 0:
        raise UserError(
            f"params.yaml: quantize.margin = 0 is not allowed with scheme {params['scheme']}, "
            "whose grid it sizes; set it above 0 (e.g. 0.05)"
        )
    calibration = read_xy(TRAIN)
    fmodel = load_model(FLOAT, expect=FloatModel)
    qmodel = quantize_within(
        fmodel.coef,
        fmodel.intercept,
        feature_names=fmodel.feature_names,
        calibration=calibration,
        **params,
    )
    qmodel.training_range = fmodel.training_range  # the schema travels with the model
    atomic_write_text(OUT, dumps(qmodel))


if __name__ == "__main__":
    run(main)

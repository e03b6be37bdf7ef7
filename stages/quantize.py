"""Stage quantize: the float model's parameters as a few-byte integer model, saved as JSON.

The codes are chosen on the training split. ``quantize.margin`` is the accuracy
budget: with ``scheme`` or ``bits`` at ``auto``, the saved model is the smallest
payload whose training R² loss is within it (``cali_reg.quantize.quantize_within``).
"""

from cali_reg.data import read_xy
from cali_reg.errors import UserError, run
from cali_reg.files import atomic_write_text
from cali_reg.formats import BITS, FORMATS
from cali_reg.model import FloatModel, dumps, load_model
from cali_reg.params import (
    auto_or_int_in,
    boolean,
    load_params,
    number_above,
    number_at_least,
    one_of,
)
from cali_reg.quantize import AUTO, ROUNDINGS, quantize_within

TRAIN = "data/train.csv"
FLOAT = "models/float.json"
OUT = "models/quant.json"
RULES = {
    "scheme": one_of(AUTO, *FORMATS),
    "bits": auto_or_int_in(BITS.start, BITS.stop - 1),
    "margin": number_at_least(0),
    "padding": number_above(0),
    "half_width": number_above(0),
    "rounding": one_of(*ROUNDINGS),
    "refit_intercept": boolean(),
}


def main() -> None:
    params = load_params("quantize", RULES)
    scheme, bits = params["scheme"], params["bits"]
    if scheme != AUTO and bits != AUTO and bits not in FORMATS[scheme].bits:
        widths = FORMATS[scheme].bits
        raise UserError(
            f"params.yaml: quantize.bits = {bits} is not allowed with scheme {scheme}; "
            f"use {widths.start} to {widths.stop - 1}, or auto"
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

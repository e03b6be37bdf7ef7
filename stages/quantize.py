"""Stage quantize: quantise the float model's parameters to a few bits, saved as JSON.

The sound schemes can re-fit the intercept and round error-aware; both use the
training split as calibration data. The seed's ``window`` scheme ignores them.
"""
import sys

from stages import quantizers, train
from stages.common import (FEATURES, atomic_write_text, boolean, int_in, load_params,
                           number_above, one_of, read_xy, run, split_rows)
from stages.split import RULES as SPLIT_RULES

TRAIN = "data/train.csv"
OUT = "models/quant.json"
RULES = {
    "scheme": one_of(*quantizers.SCHEMES),
    "bits": int_in(2, 16),
    "margin": number_above(0),
    "refit_intercept": boolean(),
    "rounding": one_of(*quantizers.ROUNDINGS),
}


def unused_keys(scheme: str) -> list[str]:
    """The quantize params that ``scheme`` ignores (they are validated all the same)."""
    spec = quantizers.SCHEMES[scheme]
    return (([] if spec.uses_margin else ["margin"])
            + ([] if spec.refines else ["refit_intercept", "rounding"]))


def main() -> None:
    params = load_params("quantize", RULES)
    test_size = load_params("split", SPLIT_RULES)["test_size"]
    calibration = read_xy(TRAIN, rows=split_rows(test_size)["train"])
    coef, intercept = train.load_weights()
    qmodel = quantizers.quantize(coef, intercept, scheme=params["scheme"],
                                 bits=params["bits"], margin=params["margin"],
                                 rounding=params["rounding"],
                                 refit_intercept=params["refit_intercept"],
                                 calibration=calibration, feature_names=FEATURES)
    atomic_write_text(OUT, quantizers.dumps(qmodel))
    unused = unused_keys(params["scheme"])
    if unused:
        # so that `dvc exp run -S quantize.margin=...` on pow2 does not look like a bug
        print(f"note: scheme {params['scheme']} does not use "
              + ", ".join(f"quantize.{key}" for key in unused), file=sys.stderr)


if __name__ == "__main__":
    run(main)

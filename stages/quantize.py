"""Stage quantize: quantise the float model's parameters to a few bits, saved as JSON."""
from stages import quantizers, train
from stages.common import (FEATURES, atomic_write_text, int_in, load_params, number_above,
                           one_of, run)

OUT = "models/quant.json"
RULES = {
    "scheme": one_of(*quantizers.SCHEMES),
    "bits": int_in(2, 16),
    "margin": number_above(0),
}


def main() -> None:
    params = load_params("quantize", RULES)
    coef, intercept = train.load_weights()
    qmodel = quantizers.quantize(coef, intercept, scheme=params["scheme"],
                                 bits=params["bits"], margin=params["margin"],
                                 feature_names=FEATURES)
    atomic_write_text(OUT, quantizers.dumps(qmodel))


if __name__ == "__main__":
    run(main)

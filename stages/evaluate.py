"""Stage evaluate: score the float and the quantised model on the test split.

One metrics file per model with the same keys, so that ``dvc metrics show`` lines
them up; a compare file with the quant-minus-float deltas; and each test row's
predictions and residuals for the plots. Each model reads the test columns by
the names in its file, in its own order. Numpy only: this stage, which every
experiment re-runs, does not pay for importing scikit-learn.
"""

import os

import numpy as np

from cali_reg.data import read_named, write_table
from cali_reg.errors import run
from cali_reg.evaluate import DECIMALS, compare, scores
from cali_reg.files import write_json
from cali_reg.model import FloatModel, QuantizedModel, exact_predict, load_model

TEST = "data/test.csv"
FLOAT = "models/float.json"
ESTIMATOR = "models/float.joblib"  # its size is a metric
QUANT = "models/quant.json"
METRICS = {
    "float": "metrics/float.json",
    "quant": "metrics/quant.json",
    "compare": "metrics/compare.json",
}
PREDICTIONS = "plots/predictions.csv"


def main() -> None:
    fmodel = load_model(FLOAT, expect=FloatModel)
    qmodel = load_model(QUANT, expect=QuantizedModel)
    X_float, y = read_named(TEST, fmodel.feature_names, FLOAT)
    X_quant, _ = read_named(TEST, qmodel.feature_names, QUANT)
    # Exactly rounded sums: the stored figures must not depend on the BLAS kernel.
    float_pred = exact_predict(X_float, fmodel.coef, fmodel.intercept)
    quant_pred = exact_predict(X_quant, qmodel.coef, qmodel.intercept)
    float_m = scores(y, float_pred) | {
        "bits": fmodel.bits,
        "payload_bytes": fmodel.payload_bytes,
        "file_bytes": os.path.getsize(ESTIMATOR),
    }
    quant_m = scores(y, quant_pred) | {
        "bits": qmodel.bits,  # with bits: auto, chosen by quantize.margin
        "payload_bytes": qmodel.payload_bytes,
        "file_bytes": os.path.getsize(QUANT),
    }
    write_json(METRICS["float"], float_m)
    write_json(METRICS["quant"], quant_m)
    write_json(METRICS["compare"], compare(float_m, quant_m, float_pred, quant_pred))
    table = np.column_stack([y, float_pred, quant_pred, y - float_pred, y - quant_pred])
    write_table(
        PREDICTIONS,
        ("actual", "float", "quant", "float_residual", "quant_residual"),
        np.round(table, DECIMALS),
    )


if __name__ == "__main__":
    run(main)

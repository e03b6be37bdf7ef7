"""Stage evaluate: score the float and the quantised model on the test split.

Writes one metrics file per model with the same keys, so that ``dvc metrics show``
lines them up, a compare file with the quant-minus-float deltas, and each test
row's predictions and residuals (actual minus predicted) for the plots.

Numpy only: both models are read from JSON and the metrics are a few lines of
arithmetic, so this stage, which every experiment re-runs, does not pay the
second or so that importing scikit-learn costs.
"""
import math
import os

import numpy as np

from stages import quantizers, train
from stages.common import (FEATURES, UserError, load_params, read_xy, run, split_rows,
                           write_json, write_table)
from stages.split import RULES as SPLIT_RULES

TEST = "data/test.csv"
QUANT = "models/quant.json"
METRICS = {"float": "metrics/float.json", "quant": "metrics/quant.json",
           "compare": "metrics/compare.json"}
PREDICTIONS = "plots/predictions.csv"
# Metrics are rounded so that last-bit differences between CPUs cannot change them.
DECIMALS = 6


def scores(y_true, y_pred) -> dict:
    """R², RMSE and MAE as ``sklearn.metrics`` defines them, rounded to ``DECIMALS``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    err = y_true - np.asarray(y_pred, dtype=np.float64)
    sse = float(np.dot(err, err))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "r2": round(1.0 - sse / sst, DECIMALS),
        "rmse": round(math.sqrt(sse / len(err)), DECIMALS),
        "mae": round(float(np.mean(np.abs(err))), DECIMALS),
    }


def compare(float_m: dict, quant_m: dict, float_pred, quant_pred) -> dict:
    """Quant-minus-float deltas, the payload size ratio and the largest prediction gap."""
    out = {f"delta_{k}": round(quant_m[k] - float_m[k], DECIMALS) for k in ("r2", "rmse", "mae")}
    out["size_ratio"] = round(quant_m["payload_bytes"] / float_m["payload_bytes"], DECIMALS)
    out["max_abs_pred_diff"] = round(float(np.max(np.abs(quant_pred - float_pred))), DECIMALS)
    return out


def main() -> None:
    test_size = load_params("split", SPLIT_RULES)["test_size"]
    X, y = read_xy(TEST, rows=split_rows(test_size)["test"])
    coef, intercept = train.load_weights()
    qmodel = quantizers.load(QUANT)
    if qmodel.feature_names != FEATURES:
        raise UserError(f"{QUANT} expects features {', '.join(qmodel.feature_names)}, "
                        f"not {', '.join(FEATURES)}; re-run 'dvc repro -f quantize'")
    # the same prediction path as the quantised model's
    float_pred = quantizers.linear_predict(X, coef, intercept)
    quant_pred = qmodel.predict(X)

    float_m = scores(y, float_pred) | {
        "payload_bytes": int(coef.nbytes + np.float64(intercept).nbytes),
        "file_bytes": os.path.getsize(train.OUT),  # the estimator as scikit-learn saves it
    }
    quant_m = scores(y, quant_pred) | {
        "payload_bytes": qmodel.payload_bytes,
        "file_bytes": os.path.getsize(QUANT),
    }
    write_json(METRICS["float"], float_m)
    write_json(METRICS["quant"], quant_m)
    write_json(METRICS["compare"], compare(float_m, quant_m, float_pred, quant_pred))
    table = np.round(np.column_stack([y, float_pred, quant_pred,
                                      y - float_pred, y - quant_pred]), DECIMALS)
    write_table(PREDICTIONS, ("actual", "float", "quant", "float_residual", "quant_residual"),
                table)


if __name__ == "__main__":
    run(main)

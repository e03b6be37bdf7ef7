"""Stage evaluate: score the float and the quantised model on the test split.

Writes one metrics file per model with the same keys, so that ``dvc metrics show``
lines them up, a compare file with the quant-minus-float deltas, and each test
row's predictions and residuals (actual minus predicted) for the plots.
"""
import os

import numpy as np

from stages import quantizers, train
from stages.common import FEATURES, UserError, read_xy, run, write_json, write_table

TEST = "data/test.csv"
QUANT = "models/quant.json"
METRICS = {"float": "metrics/float.json", "quant": "metrics/quant.json",
           "compare": "metrics/compare.json"}
PREDICTIONS = "plots/predictions.csv"
# Metrics are rounded so that last-bit differences between CPUs cannot change them.
DECIMALS = 6


def scores(y_true, y_pred) -> dict:
    """R², RMSE and MAE of ``y_pred``, rounded to ``DECIMALS``."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    return {
        "r2": round(float(r2_score(y_true, y_pred)), DECIMALS),
        "rmse": round(float(root_mean_squared_error(y_true, y_pred)), DECIMALS),
        "mae": round(float(mean_absolute_error(y_true, y_pred)), DECIMALS),
    }


def compare(float_m: dict, quant_m: dict, float_pred, quant_pred) -> dict:
    """Quant-minus-float deltas, the payload size ratio and the largest prediction gap."""
    out = {f"delta_{k}": round(quant_m[k] - float_m[k], DECIMALS) for k in ("r2", "rmse", "mae")}
    out["size_ratio"] = round(quant_m["payload_bytes"] / float_m["payload_bytes"], DECIMALS)
    out["max_abs_pred_diff"] = round(float(np.max(np.abs(quant_pred - float_pred))), DECIMALS)
    return out


def main() -> None:
    X, y = read_xy(TEST)
    fmodel = train.load(train.OUT)
    qmodel = quantizers.load(QUANT)
    if qmodel.feature_names != FEATURES:
        raise UserError(f"{QUANT} expects features {', '.join(qmodel.feature_names)}, "
                        f"not {', '.join(FEATURES)}; re-run 'dvc repro -f quantize'")
    float_pred = train.predict(fmodel, X)
    quant_pred = qmodel.predict(X)

    float_m = scores(y, float_pred) | {
        "payload_bytes": int(fmodel.coef_.nbytes + np.float64(fmodel.intercept_).nbytes),
        "file_bytes": os.path.getsize(train.OUT),
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

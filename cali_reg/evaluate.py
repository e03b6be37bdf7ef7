"""Scoring a model's predictions: the metrics that DVC compares."""

from __future__ import annotations

import math

import numpy as np

# Every figure the pipeline writes is rounded to this many decimals, so that
# last-bit differences between CPUs cannot change it.
DECIMALS = 6


def rounded(value) -> float:
    """``value`` rounded to ``DECIMALS``, -0.0 written as 0.0: the one rounding of figures."""
    return round(float(value), DECIMALS) + 0.0


def scores(y_true, y_pred) -> dict[str, float]:
    """R², RMSE and MAE as ``sklearn.metrics`` defines them, rounded to ``DECIMALS``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    err = y_true - np.asarray(y_pred, dtype=np.float64)
    sse = float(np.dot(err, err))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "r2": rounded(1.0 - sse / sst),
        "rmse": rounded(math.sqrt(sse / len(err))),
        "mae": rounded(np.mean(np.abs(err))),
    }


def compare(float_m: dict, quant_m: dict, float_pred, quant_pred) -> dict[str, float]:
    """Quant-minus-float deltas, the payload size ratio and the largest prediction gap."""
    out = {f"delta_{k}": rounded(quant_m[k] - float_m[k]) for k in ("r2", "rmse", "mae")}
    out["size_ratio"] = rounded(quant_m["payload_bytes"] / float_m["payload_bytes"])
    gap = np.max(np.abs(np.asarray(quant_pred) - np.asarray(float_pred)))
    out["max_abs_pred_diff"] = rounded(gap)
    return out

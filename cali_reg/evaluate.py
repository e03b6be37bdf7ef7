"""Scoring a model's predictions: the metrics that DVC compares."""

from __future__ import annotations

import math

import numpy as np

# Metrics are rounded so that last-bit differences between CPUs cannot change them.
DECIMALS = 6


def scores(y_true, y_pred) -> dict[str, float]:
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


def compare(float_m: dict, quant_m: dict, float_pred, quant_pred) -> dict[str, float]:
    """Quant-minus-float deltas, the payload size ratio and the largest prediction gap."""
    out = {f"delta_{k}": round(quant_m[k] - float_m[k], DECIMALS) for k in ("r2", "rmse", "mae")}
    out["size_ratio"] = round(quant_m["payload_bytes"] / float_m["payload_bytes"], DECIMALS)
    gap = np.max(np.abs(np.asarray(quant_pred) - np.asarray(float_pred)))
    out["max_abs_pred_diff"] = round(float(gap), DECIMALS)
    return out

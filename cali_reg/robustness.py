"""Quantisation across many splits: does a scheme's accuracy hold on every split, or on one?

For each seeded train/test split the float model is fitted as the train stage
fits it and quantised with each variant at each bit width, the codes chosen on
that split's training rows only. The change in R² (quantised minus float) is
summarised per variant and width: mean and worst over the splits, on the test
rows and on the training rows (the quantity the codes were chosen for).
"""

from __future__ import annotations

import numpy as np

from cali_reg.data import FEATURES, split_table
from cali_reg.model import linear_predict
from cali_reg.quantize import quantize
from cali_reg.train import fit

BITS = range(2, 17)
# The default scheme and what it improves on, and the best setting of each other
# scheme (docs/quantisation.md). Fixed bit widths: the margin criterion is off.
VARIANTS = {
    "pow2-optimal-refit": {"scheme": "pow2", "rounding": "optimal", "refit_intercept": True},
    "pow2-error_aware-refit": {
        "scheme": "pow2",
        "rounding": "error_aware",
        "refit_intercept": True,
    },
    "pow2-nearest-refit": {"scheme": "pow2", "rounding": "nearest", "refit_intercept": True},
    "affine-m0.05-optimal-refit": {
        "scheme": "affine",
        "margin": 0.05,
        "rounding": "optimal",
        "refit_intercept": True,
    },
    "window-m0.05": {"scheme": "window", "margin": 0.05},
}
# The variants in words, for the plot's legend (no commas: the table is plain CSV).
LABELS = {
    "pow2-optimal-refit": "pow2; optimal codes; intercept re-fit (the default)",
    "pow2-error_aware-refit": "pow2; error-aware rounding; intercept re-fit",
    "pow2-nearest-refit": "pow2; nearest rounding; intercept re-fit",
    "affine-m0.05-optimal-refit": "affine; margin 0.05; optimal codes; intercept re-fit",
    "window-m0.05": "window (the seed's); margin 0.05",
}
COLUMNS = (
    "variant",
    "label",
    "bits",
    "payload_bytes",
    "test_delta_r2_mean",
    "test_delta_r2_worst",
    "train_delta_r2_mean",
    "train_delta_r2_worst",
)
DECIMALS = 6


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² of ``pred`` against ``y``, unrounded."""
    err = y - pred
    # np.sum, not a BLAS dot: as exact (pairwise), and a BLAS call costs more than
    # the sum itself at this size
    return 1.0 - float(np.sum(err * err)) / float(np.sum((y - y.mean()) ** 2))


def split_deltas(table: np.ndarray, test_size: float, seed: int) -> dict:
    """{(variant, bits): (payload_bytes, test ΔR², train ΔR²)} on one seeded split."""
    train, test = split_table(table, test_size, seed)
    n = len(FEATURES)
    X, y, X_test, y_test = train[:, :n], train[:, n], test[:, :n], test[:, n]
    estimator = fit(X, y)
    coef, intercept = estimator.coef_, float(estimator.intercept_)
    float_train = r2(y, linear_predict(X, coef, intercept))
    float_test = r2(y_test, linear_predict(X_test, coef, intercept))
    out = {}
    for name, settings in VARIANTS.items():
        for bits in BITS:
            qmodel = quantize(
                coef, intercept, bits=bits, feature_names=FEATURES, calibration=(X, y), **settings
            )
            out[name, bits] = (
                qmodel.payload_bytes,
                r2(y_test, qmodel.predict(X_test)) - float_test,
                r2(y, qmodel.predict(X)) - float_train,
            )
    return out


def _fixed(value: float) -> str:
    return f"{round(float(value), DECIMALS) + 0.0:.{DECIMALS}f}"  # + 0.0 turns -0.0 into 0.0


def robustness(table: np.ndarray, splits: int, test_size: float) -> list[list]:
    """Rows of ``COLUMNS``, one per (variant, bits) in a fixed order, over seeds 0..splits-1."""
    per_split = [split_deltas(table, test_size, seed) for seed in range(splits)]
    rows = []
    for name in VARIANTS:
        for bits in BITS:
            payload = per_split[0][name, bits][0]
            test = [s[name, bits][1] for s in per_split]
            train = [s[name, bits][2] for s in per_split]
            rows.append(
                [
                    name,
                    LABELS[name],
                    bits,
                    payload,
                    *(_fixed(v) for v in (np.mean(test), min(test), np.mean(train), min(train))),
                ]
            )
    return rows

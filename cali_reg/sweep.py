"""Every quantisation scheme at every bit width, scored on the test split.

Each variant in ``variants()`` is one line in a DVC plot. The grid is fixed
here, not in params.yaml, because dvc.yaml names the files that its plots draw.
"""

from __future__ import annotations

import numpy as np

from cali_reg.data import FEATURES
from cali_reg.evaluate import scores
from cali_reg.quantize import SCHEMES, quantize

BITS = range(2, 17)
MARGINS = (0.01, 0.05, 0.2)
# (rounding, refit_intercept) for the schemes that honour them
REFINEMENTS = (("optimal", True), ("error_aware", True), ("nearest", True), ("nearest", False))
COLUMNS = ("bits", "payload_bytes", "r2", "rmse", "mae")


def variants() -> dict[str, dict]:
    """Every scheme, at each margin if it uses one, with each refinement if it has them."""
    out = {}
    for scheme, spec in SCHEMES.items():
        for margin in MARGINS if spec.uses_margin else (None,):
            for rounding, refit in REFINEMENTS if spec.refines else (("nearest", False),):
                name = scheme + (f"-m{margin:g}" if margin is not None else "")
                if spec.refines:
                    name += f"-{rounding}" + ("-refit" if refit else "")
                out[name] = {
                    "scheme": scheme,
                    "margin": margin,
                    "rounding": rounding,
                    "refit_intercept": refit,
                }
    return out


def sweep(coef: np.ndarray, intercept: float, train_xy, test_xy) -> dict[str, list[list]]:
    """Rows of ``COLUMNS`` for each variant, one row per bit width."""
    X_test, y_test = test_xy
    tables = {}
    for name, settings in variants().items():
        rows = []
        for bits in BITS:
            qmodel = quantize(
                coef,
                intercept,
                bits=bits,
                feature_names=FEATURES,
                calibration=train_xy,
                **settings,
            )
            m = scores(y_test, qmodel.predict(X_test))
            rows.append([bits, qmodel.payload_bytes, m["r2"], m["rmse"], m["mae"]])
        tables[name] = rows
    return tables

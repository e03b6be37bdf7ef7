"""Every quantisation scheme at every bit width, scored on the test split.

Each variant in ``variants()`` is one line in the accuracy-against-size plot. The
grid is fixed here, not in params.yaml: it is the map of the whole design space,
not a knob of the served model.
"""

from __future__ import annotations

import numpy as np

from cali_reg.data import FEATURES
from cali_reg.evaluate import DECIMALS, scores
from cali_reg.model import linear_predict
from cali_reg.quantize import SCHEMES, quantize

BITS = range(2, 17)
MARGINS = (0.01, 0.05, 0.2)
# (rounding, refit_intercept) for the schemes that honour them
REFINEMENTS = (("optimal", True), ("error_aware", True), ("nearest", True), ("nearest", False))
COLUMNS = (
    "variant",
    "label",
    "featured",
    "bits",
    "payload_bytes",
    "r2",
    "rmse",
    "mae",
    "r2_loss",
    "pareto",
)
# One variant per scheme is drawn in the accuracy-against-size plot: each scheme at its
# best settings (the seed's window at the seed's margin), so the plot compares schemes.
FEATURED = {
    "window": {"margin": 0.05},
    "affine": {"margin": 0.01, "rounding": "optimal", "refit_intercept": True},
    "pow2": {"rounding": "optimal", "refit_intercept": True},
}
ROUNDING_WORDS = {
    "nearest": "nearest rounding",
    "error_aware": "error-aware rounding",
    "optimal": "optimal codes",
}


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


def label(settings: dict) -> str:
    """The variant in words, for a plot's legend."""
    words = [settings["scheme"] + (" (the seed's)" if settings["scheme"] == "window" else "")]
    if settings["margin"] is not None:
        words.append(f"margin {settings['margin']:g}")
    if SCHEMES[settings["scheme"]].refines:
        words.append(ROUNDING_WORDS.get(settings["rounding"], settings["rounding"]))
        words.append("intercept re-fit" if settings["refit_intercept"] else "stored intercept")
    return "; ".join(words)  # no commas: the table is plain CSV


def is_featured(settings: dict) -> bool:
    wanted = FEATURED.get(settings["scheme"], {})
    return all(settings[key] == value for key, value in wanted.items())


def pareto_front(payload, loss) -> np.ndarray:
    """True where no other point is as small and as accurate, and strictly better in one.

    ``payload`` and ``loss`` are equal-length sequences; smaller is better in both.
    """
    payload, loss = np.asarray(payload), np.asarray(loss)
    no_larger = (payload[None, :] <= payload[:, None]) & (loss[None, :] <= loss[:, None])
    better = (payload[None, :] < payload[:, None]) | (loss[None, :] < loss[:, None])
    return ~np.any(no_larger & better, axis=1)


def sweep(coef: np.ndarray, intercept: float, train_xy, test_xy) -> list[list]:
    """Rows of ``COLUMNS``: every variant at every bit width, in a fixed order.

    ``r2_loss`` is the float model's test R² minus the quantised model's (negative
    where quantising happened to help); ``featured`` (1 or 0) marks the one variant
    per scheme that the plot draws, and ``pareto`` the featured points that no other
    featured point beats on both payload and loss.
    """
    X_test, y_test = test_xy
    float_r2 = scores(y_test, linear_predict(X_test, coef, intercept))["r2"]
    rows = []
    for name, settings in variants().items():
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
            loss = round(float_r2 - m["r2"], DECIMALS)
            featured = int(is_featured(settings))
            rows.append(
                [
                    name,
                    label(settings),
                    featured,
                    bits,
                    qmodel.payload_bytes,
                    m["r2"],
                    m["rmse"],
                    m["mae"],
                    loss,
                ]
            )
    shown = [i for i, row in enumerate(rows) if row[2]]
    front = pareto_front([rows[i][4] for i in shown], [rows[i][8] for i in shown])
    on_front = {i for i, is_on in zip(shown, front, strict=True) if is_on}
    return [[*row, int(i in on_front)] for i, row in enumerate(rows)]

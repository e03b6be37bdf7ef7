"""Every format's variants at every bit width it supports, scored on the test split.

``variants()`` is the one list of variants (and ``label`` their words) that the
sweep draws and the robustness stage repeats. The grid is fixed here, not in
params.yaml: it is the map of the whole design space, not a knob of the served
model.
"""

from __future__ import annotations

import numpy as np

from cali_reg.data import FEATURES
from cali_reg.evaluate import rounded, scores
from cali_reg.formats import FORMATS, FormatLimitError
from cali_reg.model import linear_predict
from cali_reg.quantize import quantize

HALF_WIDTHS = (0.01, 0.05, 0.2)  # window
PADDINGS = (0.01, 0.05, 0.2)  # affine
# (rounding, refit_intercept) for the formats that read them
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
# One variant per format is drawn in the accuracy-against-size plot and repeated
# over 20 splits: each at its best settings (the seed's window at the seed's
# half-width), so the plot compares formats.
FEATURED = {
    "window": {"half_width": 0.05},
    "affine": {"padding": 0.05, "rounding": "optimal", "refit_intercept": True},
    "pow2": {"rounding": "optimal", "refit_intercept": True},
}
ROUNDING_WORDS = {
    "nearest": "nearest rounding",
    "error_aware": "error-aware rounding",
    "optimal": "optimal codes",
}


def variants() -> dict[str, dict]:
    """Every format with each setting it reads: {name: quantize settings incl. scheme}."""
    out = {}
    for scheme, fmt in FORMATS.items():
        halves = HALF_WIDTHS if "half_width" in fmt.reads else (None,)
        pads = PADDINGS if "padding" in fmt.reads else (None,)
        refinements = REFINEMENTS if "rounding" in fmt.reads else ((None, None),)
        for half in halves:
            for pad in pads:
                for rounding, refit in refinements:
                    name, settings = scheme, {"scheme": scheme}
                    if half is not None:
                        name, settings["half_width"] = name + f"-h{half:g}", half
                    if pad is not None:
                        name, settings["padding"] = name + f"-p{pad:g}", pad
                    if rounding is not None:
                        name += f"-{rounding}" + ("-refit" if refit else "")
                        settings |= {"rounding": rounding, "refit_intercept": refit}
                    out[name] = settings
    return out


def label(settings: dict) -> str:
    """The variant in words, for a plot's legend (no commas: the tables are plain CSV)."""
    words = [FORMATS[settings["scheme"]].summary]
    if "half_width" in settings:
        words.append(f"half-width {settings['half_width']:g}")
    if "padding" in settings:
        words.append(f"padding {settings['padding']:g}")
    if "rounding" in settings:
        words.append(ROUNDING_WORDS[settings["rounding"]])
        words.append("intercept re-fit" if settings["refit_intercept"] else "stored intercept")
    return "; ".join(words)


def is_featured(settings: dict) -> bool:
    wanted = FEATURED.get(settings["scheme"], {})
    return all(settings.get(key) == value for key, value in wanted.items())


def pareto_front(payload, loss) -> np.ndarray:
    """True where no other point is as small and as accurate, and strictly better in one.

    ``payload`` and ``loss`` are equal-length sequences; smaller is better in both.
    """
    payload, loss = np.asarray(payload), np.asarray(loss)
    no_larger = (payload[None, :] <= payload[:, None]) & (loss[None, :] <= loss[:, None])
    better = (payload[None, :] < payload[:, None]) | (loss[None, :] < loss[:, None])
    return ~np.any(no_larger & better, axis=1)


def sweep(coef: np.ndarray, intercept: float, train_xy, test_xy) -> list[list]:
    """Rows of ``COLUMNS``: every variant at every width its format supports, in a fixed order.

    ``r2_loss`` is the float model's test R² minus the quantised model's (negative
    where quantising happened to help); ``featured`` (1 or 0) marks the one variant
    per format that the plot draws, and ``pareto`` the featured points that no other
    featured point beats on both payload and loss. A width whose format cannot
    hold the model (``FormatLimitError``) has no row.
    """
    X_test, y_test = test_xy
    float_r2 = scores(y_test, linear_predict(X_test, coef, intercept))["r2"]
    rows = []
    for name, settings in variants().items():
        for bits in FORMATS[settings["scheme"]].bits:
            try:
                qmodel = quantize(
                    coef,
                    intercept,
                    bits=bits,
                    feature_names=FEATURES,
                    calibration=train_xy,
                    **settings,
                )
            except FormatLimitError:
                continue
            m = scores(y_test, qmodel.predict(X_test))
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
                    rounded(float_r2 - m["r2"]),
                ]
            )
    shown = [i for i, row in enumerate(rows) if row[2]]
    front = pareto_front([rows[i][4] for i in shown], [rows[i][8] for i in shown])
    on_front = {i for i, is_on in zip(shown, front, strict=True) if is_on}
    return [[*row, int(i in on_front)] for i, row in enumerate(rows)]

"""Quantisation across many splits: does a format's accuracy hold on every split, or on one?

For each seeded train/test split the float model is fitted as the train stage
fits it and quantised with each of the sweep's featured variants (and the pow2
roundings the default improves on) at every width, the codes chosen on that
split's training rows only; and the model that ``quantize_within`` selects at
each of ``margins`` is scored too. The change in R² (quantised minus float,
``evaluate.scores``) is summarised per variant and width: mean and worst over
the splits, on the test rows and on the training rows.
"""

from __future__ import annotations

import numpy as np

from cali_reg.data import FEATURES, split_table
from cali_reg.evaluate import rounded, scores
from cali_reg.formats import FORMATS, FormatLimitError
from cali_reg.model import linear_predict
from cali_reg.quantize import AUTO, quantize, quantize_within
from cali_reg.sweep import FEATURED, is_featured, label, variants
from cali_reg.train import fit

# Besides the featured variants: the pow2 roundings that optimal codes improve on.
COMPARED = ("pow2-error_aware-refit", "pow2-nearest-refit")
SELECTED = "selected"  # variant-name prefix of the margin-selected rows; their bits column is 0
# Selection by margin sees every format at its featured settings (those of params.yaml).
BEST_SETTINGS = {key: value for wanted in FEATURED.values() for key, value in wanted.items()}
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


def repeated() -> dict[str, dict]:
    """The sweep's variants that are repeated over the splits, in the sweep's order."""
    return {n: v for n, v in variants().items() if is_featured(v) or n in COMPARED}


def split_deltas(table: np.ndarray, test_size: float, seed: int, margins=()) -> dict:
    """{(variant, bits): (payload_bytes, test ΔR², train ΔR²)} on one seeded split.

    A width whose format cannot hold this split's model is left out.
    """
    train, test = split_table(table, test_size, seed)
    n = len(FEATURES)
    X, y, X_test, y_test = train[:, :n], train[:, n], test[:, :n], test[:, n]
    estimator = fit(X, y)
    coef, intercept = estimator.coef_, float(estimator.intercept_)
    float_train = scores(y, linear_predict(X, coef, intercept))["r2"]
    float_test = scores(y_test, linear_predict(X_test, coef, intercept))["r2"]

    def deltas(qmodel):
        return (
            qmodel.payload_bytes,
            rounded(scores(y_test, qmodel.predict(X_test))["r2"] - float_test),
            rounded(scores(y, qmodel.predict(X))["r2"] - float_train),
        )

    out = {}
    kw = {"feature_names": FEATURES, "calibration": (X, y)}
    for name, settings in repeated().items():
        for bits in FORMATS[settings["scheme"]].bits:
            try:
                out[name, bits] = deltas(quantize(coef, intercept, bits=bits, **kw, **settings))
            except FormatLimitError:
                continue
    for margin in margins:
        qmodel = quantize_within(
            coef, intercept, scheme=AUTO, bits=AUTO, margin=margin, **kw, **BEST_SETTINGS
        )
        out[f"{SELECTED}-m{margin:g}", 0] = deltas(qmodel)
    return out


def robustness(table: np.ndarray, splits: int, test_size: float, margins=()) -> list[list]:
    """Rows of ``COLUMNS``, one per (variant, bits) in a fixed order, over seeds 0..splits-1.

    A margin-selected row's payload is the largest over the splits (the size may
    differ from split to split); a (variant, bits) missing on any split has no row.
    """
    per_split = [split_deltas(table, test_size, seed, margins) for seed in range(splits)]
    names = {name: label(v) for name, v in repeated().items()} | {
        f"{SELECTED}-m{m:g}": f"selected by margin {m:g} (smallest payload within it)"
        for m in margins
    }
    rows = []
    for key in per_split[0]:
        if not all(key in s for s in per_split):
            continue
        payload = max(s[key][0] for s in per_split)
        test = [s[key][1] for s in per_split]
        train = [s[key][2] for s in per_split]
        stats = (np.mean(test), min(test), np.mean(train), min(train))
        rows.append([key[0], names[key[0]], key[1], payload, *(rounded(v) for v in stats)])
    return rows

"""Stage sweep: every quantisation scheme at every bit width, scored on the test split.

One process quantises the float model with each variant in ``variants()`` at
bits 2 to 16 and scores it with the evaluate stage's own ``scores``. Each variant
is one CSV under plots/sweep/ (one line in a DVC plot): bits, payload_bytes, r2,
rmse, mae. The grid is fixed here, not in params.yaml, because dvc.yaml names
the files that its plots draw.
"""
from pathlib import Path

from stages import quantizers, train
from stages.common import FEATURES, load_params, read_xy, run, split_rows, write_table
from stages.evaluate import scores
from stages.split import RULES as SPLIT_RULES

TRAIN, TEST = "data/train.csv", "data/test.csv"
OUT = Path("plots/sweep")
BITS = range(2, 17)
MARGINS = (0.01, 0.05, 0.2)
# (rounding, refit_intercept) for the schemes that honour them
REFINEMENTS = (("error_aware", True), ("nearest", True), ("nearest", False))
COLUMNS = ("bits", "payload_bytes", "r2", "rmse", "mae")


def variants() -> dict[str, dict]:
    """Every scheme, at each margin if it uses one, with each refinement if it has them."""
    out = {}
    for scheme, spec in quantizers.SCHEMES.items():
        for margin in MARGINS if spec.uses_margin else (None,):
            for rounding, refit in REFINEMENTS if spec.refines else (("nearest", False),):
                name = scheme + (f"-m{margin:g}" if margin is not None else "")
                if spec.refines:
                    name += f"-{rounding}" + ("-refit" if refit else "")
                out[name] = {"scheme": scheme, "margin": margin, "rounding": rounding,
                             "refit_intercept": refit}
    return out


def sweep(coef, intercept, train_xy, test_xy) -> dict[str, list[list]]:
    """Rows of ``COLUMNS`` for each variant, one row per bit width."""
    X_test, y_test = test_xy
    tables = {}
    for name, settings in variants().items():
        rows = []
        for bits in BITS:
            qmodel = quantizers.quantize(coef, intercept, bits=bits, feature_names=FEATURES,
                                         calibration=train_xy, **settings)
            m = scores(y_test, qmodel.predict(X_test))
            rows.append([bits, qmodel.payload_bytes, m["r2"], m["rmse"], m["mae"]])
        tables[name] = rows
    return tables


def main() -> None:
    rows = split_rows(load_params("split", SPLIT_RULES)["test_size"])
    coef, intercept = train.load_weights()
    tables = sweep(coef, intercept, read_xy(TRAIN, rows["train"]), read_xy(TEST, rows["test"]))
    for name, rows in tables.items():
        write_table(OUT / f"{name}.csv", COLUMNS, rows)
    # a variant dropped from the grid must not leave its old line behind
    for stale in set(OUT.glob("*.csv")) - {OUT / f"{name}.csv" for name in tables}:
        stale.unlink()


if __name__ == "__main__":
    run(main)

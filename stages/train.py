"""Stage train: fit a LinearRegression on the training split and save it.

Two files hold the same model: the scikit-learn estimator (joblib) and its
weights as plain JSON, which the quantize, evaluate and sweep stages
read with numpy alone, without the cost of importing scikit-learn.
"""
import json
import math
from pathlib import Path

import numpy as np

from stages.common import (FEATURES, UserError, atomic_write_bytes, load_params, read_xy, run,
                           split_rows, write_json)
from stages.split import RULES as SPLIT_RULES

IN = "data/train.csv"
OUT = "models/float.joblib"
WEIGHTS = "models/float.json"
# Fitted floats are stored to this many significant digits. A different CPU or
# BLAS moves the last bits of a least-squares solution (up to 4e-11 relative for
# the small Population coefficient across OpenBLAS's x86-64 kernels); rounding
# makes the saved model, and so dvc.lock, the same everywhere unless a value sits
# that close to a rounding boundary. Nine digits leave the committed fit 60 times
# that far from every boundary, and keep the float32 parameters that the window
# scheme quantises the same as the unrounded fit's. (README: what the gate promises.)
SIGNIFICANT_DIGITS = 9


def round_significant(x, digits: int = SIGNIFICANT_DIGITS):
    """Round each value to ``digits`` significant decimal digits."""
    x = np.asarray(x, dtype=np.float64)
    return np.array([float(f"{v:.{digits}g}") for v in x.ravel()]).reshape(x.shape)


def fit(X: np.ndarray, y: np.ndarray):
    """A LinearRegression fitted to (X, y), its floats rounded by ``round_significant``."""
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(X, y)
    model.coef_ = round_significant(model.coef_)
    model.intercept_ = float(round_significant(model.intercept_))
    model.singular_ = round_significant(model.singular_)
    return model


def save(model, path: str = OUT, weights_path: str = WEIGHTS) -> None:
    """The estimator with joblib at ``path``, its weights as JSON at ``weights_path``."""
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump(model, buf)
    atomic_write_bytes(path, buf.getvalue())
    write_json(weights_path, {"feature_names": list(FEATURES), "coef": model.coef_.tolist(),
                              "intercept": float(model.intercept_)})


def load_weights(path: str = WEIGHTS) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of the float model from its JSON file, with numpy alone."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is corrupt or truncated ({err}); "
                        "re-run 'dvc repro -f train' to rebuild it") from None
    if not (isinstance(doc, dict) and doc.get("feature_names") == list(FEATURES)
            and _finite_numbers(doc.get("coef"), len(FEATURES))
            and _finite_numbers([doc.get("intercept")], 1)):
        raise UserError(f"{path} does not hold {len(FEATURES)} finite coefficients for "
                        f"{','.join(FEATURES)} and a finite intercept; "
                        "re-run 'dvc repro -f train' to rebuild it")
    return np.array(doc["coef"], dtype=np.float64), float(doc["intercept"])


def _finite_numbers(values, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values)


def load(path: str = OUT):
    """The float model saved by this stage, checked to be a fitted 8-feature regression."""
    import joblib

    # Only this pipeline's own output is unpickled here; the served model is JSON.
    try:
        model = joblib.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except Exception as err:
        raise UserError(f"{path} is corrupt ({err.__class__.__name__}); "
                        "re-run 'dvc repro -f train' to rebuild it") from None
    coef = getattr(model, "coef_", None)
    if not hasattr(model, "predict") or np.shape(coef) != (len(FEATURES),):
        raise UserError(f"{path} is not a fitted {len(FEATURES)}-feature linear model; "
                        "re-run 'dvc repro -f train'")
    return model


def main() -> None:
    test_size = load_params("split", SPLIT_RULES)["test_size"]
    X, y = read_xy(IN, rows=split_rows(test_size)["train"])
    save(fit(X, y))


if __name__ == "__main__":
    run(main)

"""Fitting the float model, and saving it as the estimator and as plain JSON weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cali_reg.data import FEATURES
from cali_reg.errors import UserError
from cali_reg.files import atomic_write_bytes, atomic_write_text
from cali_reg.model import FloatModel, TrainingRange, dumps

# Fitted floats are stored to this many significant digits. A different CPU or
# BLAS moves the last bits of a least-squares solution (up to 4e-11 relative for
# the small Population coefficient across OpenBLAS's x86-64 kernels); rounding
# makes the saved model, and so dvc.lock, the same everywhere unless a value sits
# that close to a rounding boundary. Nine digits leave the committed fit 60 times
# that far from every boundary, and keep the float32 parameters that the window
# scheme quantises the same as the unrounded fit's (docs/reproducibility.md).
SIGNIFICANT_DIGITS = 9


def round_significant(x, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
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


def weights(estimator, training_range: TrainingRange | None = None) -> FloatModel:
    """The estimator's weights as the numpy-only FloatModel, with its training range."""
    return FloatModel(
        FEATURES,
        np.asarray(estimator.coef_, dtype=np.float64),
        float(estimator.intercept_),
        training_range,
    )


def save(
    estimator,
    path: Path | str,
    weights_path: Path | str,
    training_range: TrainingRange | None = None,
) -> None:
    """The estimator with joblib at ``path``, its weights as JSON at ``weights_path``.

    ``training_range`` (each feature's min and max in the training rows) goes into
    the JSON, so that a server can count or refuse rows the model never saw the like of.
    """
    import joblib

    buf = io.BytesIO()
    joblib.dump(estimator, buf)
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_text(weights_path, dumps(weights(estimator, training_range)))


def load_estimator(path: Path | str):
    """The estimator saved by ``save``, checked to be a fitted linear model of FEATURES.

    Only this pipeline's own output is unpickled here; the served models are JSON.
    """
    import joblib

    try:
        estimator = joblib.load(path)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run 'dvc repro' to build it") from None
    except Exception as err:
        raise UserError(
            f"{path} is corrupt ({err.__class__.__name__}); re-run 'dvc repro -f train'"
        ) from None
    if not hasattr(estimator, "predict") or np.shape(getattr(estimator, "coef_", None)) != (
        len(FEATURES),
    ):
        raise UserError(
            f"{path} is not a fitted {len(FEATURES)}-feature linear model; "
            "re-run 'dvc repro -f train'"
        )
    return estimator

"""Stage train: fit a LinearRegression on the training split and save it with joblib."""
import numpy as np

from stages.common import FEATURES, UserError, atomic_write_bytes, read_xy, run

IN = "data/train.csv"
OUT = "models/float.joblib"
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


def predict(model, X) -> np.ndarray:
    """The float model's predictions, summed in a fixed order as the quantised model's are.

    ``model.predict`` goes through BLAS, whose last bits vary by CPU and batch size;
    ``linear_predict`` gives a row the same bits everywhere.
    """
    from stages.quantizers import linear_predict

    return linear_predict(X, model.coef_, model.intercept_)


def save(model, path: str) -> None:
    import io

    import joblib

    buf = io.BytesIO()
    joblib.dump(model, buf)
    atomic_write_bytes(path, buf.getvalue())


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
    X, y = read_xy(IN)
    save(fit(X, y), OUT)


if __name__ == "__main__":
    run(main)

"""The evaluate stage's metrics, against scikit-learn's definitions."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages import evaluate


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 5000), noise=st.floats(1e-3, 1e3))
def test_scores_are_scikit_learns(seed, n, noise):
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    rng = np.random.default_rng(seed)
    y = rng.normal(2.0, 1.0, n)
    pred = y + rng.normal(0, noise, n)
    got = evaluate.scores(y, pred)
    # one unit in the last kept decimal: the two sums may round differently at the boundary
    tol = 1.5 * 10.0 ** -evaluate.DECIMALS
    assert got["r2"] == pytest.approx(r2_score(y, pred), abs=tol, rel=1e-12)
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y, pred), abs=tol, rel=1e-12)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), abs=tol, rel=1e-12)
